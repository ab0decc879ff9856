"""flan-t5-detox: PPO detoxification of FLAN-T5 dialogue summaries as SageMaker-style jobs.

Layers, one subpackage each: `contract` (the SageMaker side, free of torch: the launcher imports
only this), `ml` (the ML core), `fast` (CPU fast paths), `fixtures` (the embedded default for the
tests and the demo).
"""

__version__ = "0.1.0"
