"""Timing one contender's run: its phases (`Timer`, trl's step split by the calls it makes),
its token counts and its peak RSS, the same way for every contender. A worker stopped by its
parent still leaves the phases it finished (`PARTIAL_RESULT_ENV`)."""

from __future__ import annotations

import json
import os
import resource
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .common import PARTIAL_RESULT_ENV


@dataclass
class Measurement:
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    counts: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    started_at: float | None = None  # wall clock when the first timed phase began

    def save_partial(self) -> None:
        path = os.environ.get(PARTIAL_RESULT_ENV)
        if path:
            Path(path).write_text(json.dumps({"seconds": self.seconds, "started_at": self.started_at}))

    def result(self) -> dict:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {
            "seconds": dict(self.seconds),
            "counts": self.counts,
            "notes": self.notes,
            "peak_rss_mb": peak_kb / 1024,
        }


class Timer:
    def __init__(self, measurement: Measurement, phase: str):
        self.measurement, self.phase = measurement, phase

    def __enter__(self):
        if self.measurement.started_at is None:
            self.measurement.started_at = time.time()
            self.measurement.save_partial()
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.measurement.seconds[self.phase] += time.perf_counter() - self.start
        self.measurement.save_partial()


def instrument_trl(trainer, m: Measurement) -> None:
    """Split trl's step into its parts by wrapping the calls it makes (same for both contenders)."""

    def wrap(owner, name, phase_of):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            phase = phase_of()
            if phase is None:
                return original(*args, **kwargs)
            with Timer(m, phase):
                return original(*args, **kwargs)

        setattr(owner, name, timed)

    # No-grad passes score the rollout (policy log-probs + values, then the reference);
    # passes with grad are PPO's training forwards. Ours scores in `scoring_passes`, which also
    # runs the reference's encoder: it is timed whole, and its passes within it not again.
    ours = hasattr(trainer, "scoring_passes")
    if ours:
        wrap(trainer, "scoring_passes", lambda: "ppo_score")
    wrap(
        trainer,
        "batched_forward_pass",
        lambda: "ppo_train_forward" if torch.is_grad_enabled() else (None if ours else "ppo_score"),
    )
    wrap(trainer.accelerator, "backward", lambda: "ppo_backward")
    wrap(trainer.optimizer, "step", lambda: "ppo_optimizer")


def progress(phase: str, done: str, since: float) -> None:
    """A line per unit of work, so a run stopped early still says how far it got, and when."""
    print(f"progress {phase}: {done}, {time.perf_counter() - since:.1f} s", flush=True)


def ppo_other(m: Measurement, step_seconds: float) -> None:
    parts = ("ppo_score", "ppo_train_forward", "ppo_backward", "ppo_optimizer")
    m.seconds["ppo_other"] = step_seconds - sum(m.seconds[p] for p in parts)


def count_tokens(m: Measurement, tokenizer, queries, responses, reward_tokenizer, reward_texts) -> None:
    m.counts["query_tokens"] = [len(q) for q in queries]
    m.counts["response_tokens"] = [len(r) for r in responses]
    enc = reward_tokenizer(reward_texts, truncation=True)
    m.counts["reward_tokens"] = [len(ids) for ids in enc["input_ids"]]


def warm_up(model, query: torch.Tensor) -> None:
    """One short generate so one-time kernel and allocator set-up is not timed (both contenders)."""
    with torch.no_grad():
        model.generate(input_ids=query[None], max_new_tokens=2, do_sample=True, top_k=0)
