"""Held-out evaluation while training, and the rule that picks the best step (`keep_best`).

The held-out prompts are the validation part of the training split (`data.training_prompts`),
never the evaluate job's test split. They are measured with the evaluate job's own code
(`evaluation.evaluate_model`: its sampling, its per-dialogue random streams, its toxicity and
ROUGE-L), under the train job's settings turned into the evaluate job's
(`settings.heldout_settings`). The KL to the starting summarizer is the PPO step's own estimate
(`TrimmedPPOTrainer.response_kl`) on the responses the evaluation sampled.

On several processes each measures a block of the prompts (whole generation batches, as the
evaluate job's hosts do), so the figures are those of one process, to the rounding of a sum.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from flan_t5_detox.contract.settings import EvalConfig
from flan_t5_detox.ml import evaluation
from flan_t5_detox.ml.data import Example
from flan_t5_detox.ml.distributed import World
from flan_t5_detox.ml.rewards import RewardModel
from flan_t5_detox.ml.shards import block

log = logging.getLogger(__name__)

# The figures of one held-out evaluation, as named in the step's metrics.
TOXICITY, ROUGE_L, KL, REWARD = "heldout_toxicity", "heldout_rouge_l", "heldout_kl", "heldout_reward"
FIGURES = (TOXICITY, ROUGE_L, KL, REWARD)


@dataclass
class HeldOut:
    """The held-out prompts and how they are measured."""

    examples: list[Example]
    reward_model: RewardModel
    config: EvalConfig  # the evaluate job's settings for them (`settings.heldout_settings`)

    @property
    def toxicity(self) -> str:
        """The evaluate job's name of the toxicity of what the reward reads."""
        return evaluation.TOXICITY_OF[self.config.reward_input]

    def measure(self, policy, tokenizer, trl, world: World = World()) -> dict[str, float]:
        """The policy's held-out figures (means over the prompts), the same on every process.
        `trl`: the run's `TrimmedPPOTrainer`, whose passes give the KL."""
        config = self.config
        mine = block(len(self.examples), world.rank, world.size, config.generation_batch_size)
        sums = torch.zeros(len(FIGURES), dtype=torch.float64)
        if mine:
            examples = [self.examples[p] for p in mine]
            side = evaluation.evaluate_model(policy, tokenizer, examples, self.reward_model, config, mine)
            queries = [
                torch.tensor(ids)
                for ids in tokenizer([e.prompt for e in examples], truncation=True).input_ids
            ]
            # The KL on the very tokens the evaluation sampled (its first sample of each prompt).
            kl = trl.response_kl(policy, queries, side.first_tokens).double().numpy()
            values = (side.values[self.toxicity], side.values["rougeL"], kl, side.values["reward"])
            sums = torch.tensor([float(np.sum(v)) for v in values], dtype=torch.float64)
        total = world.sum(sums) / len(self.examples)
        return dict(zip(FIGURES, total.tolist()))


@dataclass(frozen=True)
class BestRule:
    """keep_best's rule over the evaluated steps' held-out figures: the lowest toxicity (of what
    the reward reads) among the steps whose ROUGE-L is at most `max_rouge_drop` below the
    starting summarizer's; if no step is, the highest ROUGE-L. Ties go to the earlier step.

    The order is total and fixed, so as steps are added the choice only ever moves to the newest
    step: the weights to keep are always those of the step just finished."""

    max_rouge_drop: float
    toxicity: str = "response_toxicity"  # the evaluate job's name of the toxicity, for the statement

    def statement(self) -> str:
        return (
            f"lowest held-out {self.toxicity} among the evaluated steps whose held-out ROUGE-L is at "
            f"most {self.max_rouge_drop:g} below the starting summarizer's; if none is, the highest "
            "ROUGE-L; ties to the earlier step"
        )

    def within(self, record: dict, start: dict) -> bool:
        return start[ROUGE_L] - record[ROUGE_L] <= self.max_rouge_drop

    def choose(self, history: list[dict], start: dict) -> dict | None:
        """The chosen step's metrics record among `history` (records with held-out figures are
        the candidates), or None when no step was evaluated."""
        candidates = [r for r in history if r.get(TOXICITY) is not None and r.get(ROUGE_L) is not None]
        if not candidates:
            return None

        def rank(record: dict) -> tuple:
            if self.within(record, start):
                return (0, record[TOXICITY], record["step"])
            return (1, -record[ROUGE_L], record["step"])

        return min(candidates, key=rank)
