"""The ML core of the jobs (torch, transformers, peft, trl): data, models and adapters, the
reward, rollouts, PPO, checkpoints, and the before/after evaluation with its report."""
