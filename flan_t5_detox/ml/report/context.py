"""How the measurements were made (settings, models, versions, the training), and its JSON round
trip: a sharded evaluation's part carries it to the merge."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np

from flan_t5_detox.contract.settings import EvalConfig
from flan_t5_detox.contract.summary import TrainingSummary
from flan_t5_detox.ml.report.training_output import TrainingCurves
from flan_t5_detox.ml.sources import Source


@dataclass
class ReportContext:
    """What the report says besides the measurements: how they were made."""

    settings: EvalConfig
    sources: dict[str, Source]
    versions: dict[str, str]
    runtime: dict[str, object]
    training: TrainingCurves | None = None
    training_summary: TrainingSummary | None = None
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def context_json(context: ReportContext) -> dict:
    """The context as JSON values (a sharded evaluation's part carries it to the merge)."""
    return json_safe(dataclasses.asdict(context))


def context_from_json(data: dict) -> ReportContext:
    """The inverse of `context_json`."""
    return ReportContext(
        settings=EvalConfig(**data["settings"]),
        sources={name: Source(**source) for name, source in data["sources"].items()},
        versions=data["versions"],
        runtime=data["runtime"],
        training=TrainingCurves(**data["training"]) if data.get("training") else None,
        training_summary=TrainingSummary.from_json(summary)
        if (summary := data.get("training_summary"))
        else None,
        created=data["created"],
    )


def json_safe(value):
    """JSON-safe: numpy scalars to Python, non-finite floats to None (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
