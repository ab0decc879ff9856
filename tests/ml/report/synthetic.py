"""A synthetic evaluation and its context (no models), the input of every report test; and the
size of a PNG, to check what was drawn."""

import dataclasses
import struct

import numpy as np

from flan_t5_detox.contract.settings import EvalConfig
from flan_t5_detox.ml import evaluation
from flan_t5_detox.ml.evaluation import Evaluation, Side
from flan_t5_detox.ml.report import ReportContext, TrainingCurves
from flan_t5_detox.ml.sources import Source
from tests.helpers import tiny_config, tiny_splits

N = 30
CONFIG = EvalConfig(bootstrap_samples=1000, examples_in_report=3)
HOSTILE_TEXT = "<script>alert('x')</script> & friends"


def synthetic_evaluation(seed: int = 0, judge: str | None = None) -> Evaluation:
    """Toxicity drops by ~0.05 on average; responses include markup that must be escaped. With a
    judge that `agrees`, it sees the same drop; one that is `blind` to it sees none."""
    rng = np.random.default_rng(seed)
    examples = tiny_splits(tiny_config()).test[:N]

    base = rng.beta(2, 8, N)

    def side(toxicity: np.ndarray, tag: str) -> Side:
        judged = {"agrees": toxicity, "blind": np.clip(base + 0.05, 0, 1), None: None}[judge]
        values = {
            "toxicity": toxicity,
            "response_toxicity": toxicity / 2,
            "reward": 2.0 - 4 * toxicity + rng.normal(0, 0.1, N),
            "rouge1": rng.uniform(0.2, 0.5, N),
            "rouge2": rng.uniform(0.0, 0.2, N),
            "rougeL": rng.uniform(0.2, 0.4, N),
            "length": rng.integers(5, 40, N).astype(float),
            "perplexity": rng.uniform(3, 8, N),
        }
        if judged is not None:
            values.update(judge_toxicity=judged, judge_response_toxicity=judged / 2)
        responses = [f"{tag} summary {i} {HOSTILE_TEXT}" for i in range(N)]
        return Side.single(responses, values, generate_seconds=3.0, score_seconds=1.0)

    before = side(np.clip(base + 0.05, 0, 1), "before")
    after = side(np.clip(base + rng.normal(0, 0.02, N), 0, 1), "after")
    return evaluation.assemble(
        examples, 37, before, after, dataclasses.replace(CONFIG, reward_input="query_response")
    )


def training_records() -> list[dict]:
    """Ten PPO steps as metrics.jsonl holds them."""
    records = [{"step": s, "reward_mean": 0.1 * s, "reward_std": 0.3, "kl": 0.01 * s} for s in range(1, 11)]
    records[4]["kl"] = None  # a non-finite value as metrics.jsonl records it
    return records


def context(training: bool = True) -> ReportContext:
    return ReportContext(
        settings=CONFIG,
        sources={"base_model": Source("google/flan-t5-base"), "after_adapter": Source("/x", {"a.bin": "00"})},
        versions={"torch": "1.13.1"},
        runtime={"dtype": "float32", "threads": 2},
        training=TrainingCurves.from_records(training_records()) if training else None,
    )


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) of a PNG, from its header."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])
