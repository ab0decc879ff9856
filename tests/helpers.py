"""Small builders shared by the tests (the trainer on tiny models)."""

from __future__ import annotations

import torch

from flan_t5_detox.contract.settings import TrainConfig
from flan_t5_detox.fixtures import SAMPLE_DATASET
from flan_t5_detox.ml import data
from flan_t5_detox.ml.adapters import load_merged, read_lora_config
from flan_t5_detox.ml.generation import SamplingSettings, generate
from flan_t5_detox.ml.loading import load_tokenizer, read_weights, weight_files
from flan_t5_detox.ml.policy import build_policy
from flan_t5_detox.ml.ppo import DetoxTrainer
from flan_t5_detox.ml.rewards import RewardModel
from flan_t5_detox.ml.runtime import pick_dtype


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
        data.read_records(SAMPLE_DATASET),
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
    tokenizer = load_tokenizer(tiny_models.base_model)
    policy = build_policy(
        load_merged(tiny_models.base_model, tiny_models.peft_checkpoint, pick_dtype(config.dtype)),
        read_lora_config(tiny_models.peft_checkpoint),
        config.seed,
    )
    if reward_fn is None:
        reward_fn = RewardModel(tiny_models.reward_model).rewards

    return DetoxTrainer(config, policy, tokenizer, tiny_splits(config).train, reward_fn)


def read_events(folder) -> dict:
    """Every scalar of the event files under `folder`, by tag, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing import event_accumulator

    reader = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    reader.Reload()
    return {name: reader.Scalars(name) for name in reader.Tags()["scalars"]}


class Payload:
    """Runs code when unpickled: what a hostile pytorch_model.bin or checkpoint carries."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('the payload ran')",))


def as_bin(folder) -> dict:
    """Rewrite a copied model folder's weights as one pytorch_model.bin (the pickle format, which
    is where payloads hide); returns the weights."""
    state = read_weights(folder, "model")
    for path in weight_files(folder):
        path.unlink()
    torch.save(state, folder / "pytorch_model.bin")
    return state


def plant_payload(folder, marker) -> dict:
    """Rewrite `folder`'s weights as a pytorch_model.bin of its real weights plus a payload;
    returns the weights."""
    state = as_bin(folder)
    torch.save({**state, "extra": Payload(marker)}, folder / "pytorch_model.bin")
    return state
