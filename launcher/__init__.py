"""detox-launch: run the flan-t5-detox jobs on SageMaker or locally. Never imports torch."""
