"""What an evaluation measured, before any statistics: every dialogue's responses and scores for
each model, on one host or gathered from several (`shards`)."""

from __future__ import annotations

from dataclasses import dataclass

from flan_t5_detox.ml.data import Example
from flan_t5_detox.ml.evaluation import Side


@dataclass
class Measurements:
    """What the hosts measured, aligned by position in the sample."""

    examples: list[Example]
    positions: list[int]  # each example's place in the sample
    sample_size: int  # of the whole sample, all hosts together
    test_split_size: int
    before: Side
    after: Side
    steps: dict[int, Side]  # the adapters the train job kept along the way
    final_step: int | None  # the PPO steps of `after`, when the steps are known
