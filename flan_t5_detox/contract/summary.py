"""What a finished train job says of itself: `output/data/training_summary.json`. The train
recipe writes it and the evaluate job's report reads it, both through `TrainingSummary`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from flan_t5_detox.contract.disk import writing
from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.contract.paths import TRAINING_SUMMARY

# How the KL penalty's reference is made (see ml/policy.py): stated in every summary, because a
# reader comparing runs must know it is not the notebook's bare base model.
KL_REFERENCE = "starting summarizer (summarization adapter merged; fresh LoRA trained on top)"


@dataclass(frozen=True)
class TrainingSummary:
    status: str  # "completed"
    steps: int  # PPO steps finished, by this run and the earlier ones it resumed
    seconds_this_run: float
    final: dict | None  # the last step's metrics line
    reward_mean_first: float | None
    reward_mean_last: float | None
    settings: dict  # the TrainConfig, as JSON
    world_size: int  # processes that trained the one model
    adapter: dict  # the adapter_info.json written beside the adapter
    dtype: str
    threads: int
    cpu: str
    versions: dict[str, str]
    kl_reference: str = KL_REFERENCE

    @classmethod
    def from_history(cls, history: list[dict], **fields) -> TrainingSummary:
        """A completed run's summary; the reward figures come from its metrics `history`."""
        return cls(
            status="completed",
            final=history[-1] if history else None,
            reward_mean_first=history[0]["reward_mean"] if history else None,
            reward_mean_last=history[-1]["reward_mean"] if history else None,
            **fields,
        )

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TrainingSummary:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in names if n not in data and n != "kl_reference")
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})

    def write(self, folder: Path) -> Path:
        path = Path(folder) / TRAINING_SUMMARY
        tmp = path.with_name(f".{path.name}.tmp")
        with writing("the training summary", path):
            try:
                tmp.write_text(json.dumps(self.to_json(), indent=2))
            except OSError:
                tmp.unlink(missing_ok=True)
                raise
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, folder: Path) -> TrainingSummary | None:
        """The summary in a train job's output/data folder; None if it has none."""
        path = Path(folder) / TRAINING_SUMMARY
        if not path.is_file():
            return None
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (ValueError, TypeError, AttributeError) as exc:
            raise JobInputError(f"input 'training_output': cannot read {TRAINING_SUMMARY}: {exc}") from exc
