"""What the report reads from the train job's output/data/: the PPO curves and the summary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.contract.metrics import read_metrics
from flan_t5_detox.contract.paths import METRICS_FILE
from flan_t5_detox.contract.summary import TrainingSummary


@dataclass
class TrainingCurves:
    """PPO curves from the train job's metrics.jsonl (None marks a non-finite value)."""

    step: list[int]
    reward_mean: list[float | None]
    reward_std: list[float | None]
    kl: list[float | None]

    @classmethod
    def from_records(cls, records: list[dict]) -> TrainingCurves:
        return cls(
            step=[int(r["step"]) for r in records],
            reward_mean=[r.get("reward_mean") for r in records],
            reward_std=[r.get("reward_std") for r in records],
            kl=[r.get("kl") for r in records],
        )


def read_training_output(folder: Path | None) -> tuple[TrainingCurves | None, TrainingSummary | None]:
    """The PPO curves and the training summary from the train job's output/data/, if given."""
    if folder is None:
        return None, None
    try:
        curves = TrainingCurves.from_records(read_metrics(folder / METRICS_FILE))
    except (ValueError, KeyError, TypeError) as exc:
        raise JobInputError(f"input 'training_output': cannot read {METRICS_FILE}: {exc}") from exc
    return curves, TrainingSummary.read(folder)
