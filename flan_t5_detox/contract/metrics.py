"""Per-step training metrics: one JSON line in metrics.jsonl and one scrapeable log line.

The log line is `[metrics] name=value name=value ...` with a fixed set of names,
so SageMaker metric definitions (regexes over the job's log) can pick each
figure out; the launcher ships `metric_definitions()`. No torch import here.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path

from flan_t5_detox.contract.disk import writing

log = logging.getLogger(__name__)

# Order is the order printed; names never change once shipped.
METRIC_NAMES = (
    "step",
    "reward_mean",
    "reward_std",
    "kl",
    "kl_coef",
    "returns_mean",
    "advantages_mean",
    "policy_loss",
    "value_loss",
    "response_length_mean",
    "time_generate",
    "time_reward",
    "time_ppo",
    "time_step",
    "entropy",
    "policy_clipfrac",
    "value_clipfrac",
    "value_error",
    "ppo_epochs_run",  # PPO epochs done, a fraction when target_kl stopped one part way
    # Held-out evaluation (eval_every): only on the steps measured, and at step 0.
    "heldout_toxicity",  # of what the reward reads
    "heldout_rouge_l",
    "heldout_kl",  # to the starting summarizer, nats per response
    "heldout_reward",
    "time_heldout",
)

LINE_PREFIX = "[metrics]"
_NUMBER = r"([-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|nan|inf))"


def format_metrics_line(metrics: dict[str, float], note: str = "") -> str:
    """The scrapeable line; `note` (e.g. the progress) goes after the figures, behind `|`."""
    parts = [LINE_PREFIX]
    for name in METRIC_NAMES:
        if name in metrics:
            value = metrics[name]
            parts.append(f"{name}={int(value)}" if name == "step" else f"{name}={float(value):.6g}")
    return " ".join(parts) + (f" | {note}" if note else "")


def metric_definitions(prefix: str = "train:") -> list[dict[str, str]]:
    """SageMaker `MetricDefinitions` matching `format_metrics_line`."""
    line = re.escape(LINE_PREFIX)
    return [
        {"Name": prefix + name, "Regex": f"{line}.* {name}={_NUMBER}"}
        for name in METRIC_NAMES
        if name != "step"
    ]


class MetricsLog:
    """Appends one JSON object per PPO step to metrics.jsonl."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def rewrite(self, records: list[dict]) -> None:
        """Replace the file with `records` (a resumed job's history), atomically."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with writing(f"the metrics of steps 1..{len(records)}", self.path):
            try:
                tmp.write_text("".join(json.dumps(_finite(r)) + "\n" for r in records))
            except OSError:
                tmp.unlink(missing_ok=True)
                raise
        os.replace(tmp, self.path)

    def append(self, metrics: dict[str, float]) -> None:
        # A line torn by a full disk is dropped when the file is read (`read_metrics`), and a
        # resumed job rewrites the file from its checkpoint.
        with writing(f"the metrics of step {metrics.get('step')}", self.path):
            with self.path.open("a") as handle:
                handle.write(json.dumps(_finite(metrics)) + "\n")

    def read(self) -> list[dict]:
        return read_metrics(self.path)


def _finite(metrics: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl. A line that is not a JSON object (torn by a kill while it
    was written) is dropped with a warning naming the file and line."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
        else:
            log.warning("%s line %d is not a metrics record (torn by a kill?); dropped", path, number)
    return records
