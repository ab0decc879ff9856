"""Sharded evaluation: on N processing hosts each measures one block of the sample, writes it as
a uniquely named part, and a merge builds the one report from all the parts.

A dialogue's measurements do not depend on where it was measured: it samples from its own
random stream, seeded from its place in the sample (`generation.stream_seed`), rows of a batch never
interact, and hosts split the sample at generation-batch boundaries, so every batch (generation
and scoring) holds the same rows as on one host, down to the rounding of its matrix products
(given the same instance type and threads). So the merged measurements are, value for value,
those of one host, and the report built from them (statistics, CSV, HTML, plots) is the one-host
report. Parts are JSON: floats round-trip exactly.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from flan_t5_detox.contract.disk import EVALUATE_FIX, writing
from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.contract.settings import EvalConfig
from flan_t5_detox.ml.data import Example
from flan_t5_detox.ml.evaluation import Side
from flan_t5_detox.ml.measurements import Measurements

PART_PREFIX = "part-"
PART_VERSION = 2  # 2: k samples per dialogue


def block(n: int, index: int, count: int, unit: int = 1) -> list[int]:
    """The positions host `index` of `count` measures: contiguous blocks of whole `unit`s (the
    generation batches), their numbers differing by at most 1. A batch is then the same rows in
    the same order on any number of hosts, so even its rounding is the one-host run's."""
    units = -(-n // unit)
    first, last = index * units // count, (index + 1) * units // count
    return list(range(first * unit, min(last * unit, n)))


def part_name(host: str) -> str:
    return f"{PART_PREFIX}{host}.json"


def _side_json(side: Side) -> dict:
    return {
        "texts": side.texts,
        "samples": {name: values.tolist() for name, values in side.samples.items()},
        "generate_seconds": side.generate_seconds,
        "score_seconds": side.score_seconds,
    }


def _side(data: dict, k: int) -> Side:
    samples = {name: np.array(v, dtype=float).reshape(-1, k) for name, v in data["samples"].items()}
    return Side(data["texts"], samples, data["generate_seconds"], data["score_seconds"])


def write_part(folder: Path, host: str, measured: Measurements, context: dict) -> Path:
    """This host's block as `part-<host>.json` in `folder` (written whole, then renamed)."""
    folder.mkdir(parents=True, exist_ok=True)
    part = {
        "version": PART_VERSION,
        "host": host,
        "sample_size": measured.sample_size,
        "test_split_size": measured.test_split_size,
        "positions": measured.positions,
        "examples": [dataclasses.asdict(e) for e in measured.examples],
        "before": _side_json(measured.before),
        "after": _side_json(measured.after),
        "steps": {str(step): _side_json(side) for step, side in measured.steps.items()},
        "final_step": measured.final_step,
        "context": context,
    }
    path = folder / part_name(host)
    tmp = path.with_name(f".{path.name}.tmp")
    with writing("this host's part of the evaluation", path, EVALUATE_FIX):
        try:
            tmp.write_text(json.dumps(part))
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
    tmp.replace(path)
    return path


def _concat(sides: list[Side]) -> Side:
    return Side(
        [texts for side in sides for texts in side.texts],
        {name: np.concatenate([side.samples[name] for side in sides]) for name in sides[0].samples},
        sum(side.generate_seconds for side in sides),
        sum(side.score_seconds for side in sides),
    )


# Context entries every part must share; runtime and versions may differ between hosts, and so
# may where each host found its inputs (the files' fingerprints may not).
SHARED = ("settings", "training", "training_summary")


def _fingerprints(context: dict) -> dict:
    return {name: source.get("sha256") for name, source in context.get("sources", {}).items()}


def _load(paths: list[Path]) -> list[dict]:
    parts = []
    for path in paths:
        try:
            part = json.loads(path.read_text())
            if part.get("version") != PART_VERSION:
                raise ValueError(f"version {part.get('version')!r}, expected {PART_VERSION}")
            parts.append(part)
        except (ValueError, AttributeError) as exc:
            raise JobInputError(f"{path} is not an evaluation part: {exc}") from exc
    return parts


def _check_one_evaluation(paths: list[Path], parts: list[dict]) -> None:
    """Every part is of the same sample, measured by the same models with the same settings."""
    first = parts[0]
    for path, part in zip(paths, parts):
        for key in ("sample_size", "test_split_size", "final_step"):
            if part[key] != first[key]:
                raise JobInputError(
                    f"{path} has {key}={part[key]}, {paths[0].name} {first[key]}: not one job's parts"
                )
        for key in SHARED:
            if part["context"].get(key) != first["context"].get(key):
                raise JobInputError(f"{path} and {paths[0]} differ in {key}: parts of different evaluations")
        if _fingerprints(part["context"]) != _fingerprints(first["context"]):
            raise JobInputError(f"{path} and {paths[0]} measured different models (their files differ)")
        if sorted(part["steps"]) != sorted(first["steps"]):
            raise JobInputError(f"{path} and {paths[0]} evaluated different kept steps")


def read_parts(folder: Path) -> tuple[Measurements, dict]:
    """Every part in `folder`, checked to be one sample measured one way, merged in position
    order; returns the measurements and the context of the first host's part."""
    paths = sorted(Path(folder).rglob(f"{PART_PREFIX}*.json"))
    if not paths:
        raise JobInputError(f"no evaluation parts ({PART_PREFIX}<host>.json) in {folder}")
    parts = _load(paths)
    _check_one_evaluation(paths, parts)
    first = parts[0]
    parts.sort(key=lambda part: part["positions"][0] if part["positions"] else 0)
    positions = [p for part in parts for p in part["positions"]]
    if positions != list(range(first["sample_size"])):
        raise JobInputError(
            f"the parts in {folder} cover {len(positions)} dialogue(s) of the {first['sample_size']} "
            f"sampled, not each once: a host's part is missing or doubled ({[p.name for p in paths]})"
        )
    k = EvalConfig(**first["context"]["settings"]).samples_per_prompt  # one part's rows may be none

    measured = Measurements(
        examples=[Example(**e) for part in parts for e in part["examples"]],
        positions=positions,
        sample_size=first["sample_size"],
        test_split_size=first["test_split_size"],
        before=_concat([_side(part["before"], k) for part in parts]),
        after=_concat([_side(part["after"], k) for part in parts]),
        steps={
            int(step): _concat([_side(part["steps"][step], k) for part in parts]) for step in first["steps"]
        },
        final_step=first["final_step"],
    )
    return measured, first["context"]
