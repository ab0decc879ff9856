"""Small builders shared by the tests (the trainer on tiny models)."""

from __future__ import annotations

import torch

from flan_t5_detox import data, models
from flan_t5_detox.config import TrainConfig
from flan_t5_detox.generation import SamplingSettings, generate
from flan_t5_detox.ppo import DetoxTrainer
from flan_t5_detox.rewards import RewardModel


def tiny_config(**overrides) -> TrainConfig:
    settings = dict(
        batch_size=8,
        mini_batch_size=4,
        max_ppo_steps=3,
        output_min_length=8,
        output_max_length=24,
        dtype="float32",
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def tiny_splits(config: TrainConfig):
    return data.prepare_splits(
        data.read_records(data.SAMPLE_DATASET),
        config.input_min_text_length,
        config.input_max_text_length,
        config.test_size,
    )


def eight_responses(trainer, seed: int, budgets=(4, 30, 9, 22, 6, 30, 14, 11)):
    """The trainer's first eight queries and a seeded response to each, of mixed lengths."""
    queries = trainer.query_ids[:8]
    torch.manual_seed(seed)
    return queries, generate(trainer.policy, trainer.tokenizer, queries, list(budgets), SamplingSettings())


def tiny_trainer(tiny_models, config: TrainConfig, reward_fn=None) -> DetoxTrainer:
    tokenizer = models.load_tokenizer(tiny_models.base_model)
    policy = models.build_policy(
        models.load_summarizer(tiny_models.base_model, tiny_models.peft_checkpoint),
        models.read_lora_config(tiny_models.peft_checkpoint),
        config.seed,
    )
    if reward_fn is None:
        reward_model = RewardModel(tiny_models.reward_model)

        def reward_fn(queries, responses, _ids):
            return reward_model.rewards([q + " " + r for q, r in zip(queries, responses)])

    return DetoxTrainer(config, policy, tokenizer, tiny_splits(config).train, reward_fn)
