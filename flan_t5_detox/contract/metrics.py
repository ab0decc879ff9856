"""Per-step training metrics: one JSON line in metrics.jsonl and one scrapeable log line.

The log line is `[metrics] name=value name=value ...` with a fixed set of names,
so SageMaker metric definitions (regexes over the job's log) can pick each
figure out; the launcher ships `metric_definitions()`. No torch import here.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

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
)

LINE_PREFIX = "[metrics]"
_NUMBER = r"([-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|nan|inf))"


def format_metrics_line(metrics: dict[str, float]) -> str:
    parts = [LINE_PREFIX]
    for name in METRIC_NAMES:
        if name in metrics:
            value = metrics[name]
            parts.append(f"{name}={int(value)}" if name == "step" else f"{name}={float(value):.6g}")
    return " ".join(parts)


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

    def truncate_after(self, step: int) -> None:
        """Drop lines past `step` (a resumed job redoes them)."""
        if not self.path.exists():
            return
        kept = [line for line in self.read() if line["step"] <= step]
        self.path.write_text("".join(json.dumps(line) + "\n" for line in kept))

    def append(self, metrics: dict[str, float]) -> None:
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()
        }
        with self.path.open("a") as handle:
            handle.write(json.dumps(clean) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
