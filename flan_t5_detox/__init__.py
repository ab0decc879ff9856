"""flan-t5-detox: PPO detoxification of FLAN-T5 dialogue summaries as SageMaker-style jobs.

Modules that the launcher imports (contract, config, metrics) stay free of torch.
"""

__version__ = "0.1.0"
