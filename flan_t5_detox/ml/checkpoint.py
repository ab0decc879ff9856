"""Atomic training checkpoints: what a restarted job needs to continue exactly.

A checkpoint is a folder `step-000012/` holding `state.pt` (trainable weights,
optimizer, KL coefficient, step, RNG states, the metrics of every step so far, the run's
settings, and keep_best's step and weights) and `settings.json` (the settings again, readable
before anything heavy loads), written under a temporary name and renamed into place, so a
reader never sees half of one. A job
restarted on a fresh instance gets back only the checkpoints, so they carry everything the
outputs are built from. Only tensors and a JSON string are stored, so loading uses
`torch.load(weights_only=True)`.

A checkpoint that cannot be read (damaged, or holding objects other than tensors) is skipped
with a warning that names it. When checkpoints exist and none can be read, the job fails
instead of silently training again from step 0: the user decides whether to delete them.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from flan_t5_detox.contract.disk import size_text, writing
from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.ml.loading import DamagedFile, UnsafeFile, load_tensors

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
SETTINGS_FILE = "settings.json"  # the run's settings, readable before anything heavy loads
PREFIX = "step-"


@dataclass
class Snapshot:
    step: int  # PPO steps completed, which is also the batches taken from the data order
    kl_coef: float
    trainable: dict[str, torch.Tensor]
    optimizer: dict
    rng: dict
    history: list[dict]  # the metrics of steps 1..step
    # With defaults, so checkpoints written before these existed still load.
    settings: dict = field(default_factory=dict)  # the run's TrainConfig (`settings.check_resume`)
    heldout_start: dict = field(default_factory=dict)  # the starting summarizer's held-out figures
    best_step: int = 0  # keep_best: the best evaluated step so far (0: none yet)
    best_trainable: dict = field(default_factory=dict)  # its trainable weights

    def to_dict(self) -> dict:
        """The fields by name, values shared (not copied): what `Snapshot(**d)` takes back."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def capture_rng(length_sampler_rng: np.random.RandomState) -> dict:
    def numpy_state(state):
        name, keys, pos, has_gauss, cached = state
        return {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        }

    return {
        "torch": torch.get_rng_state(),
        "numpy": numpy_state(np.random.get_state()),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "lengths": numpy_state(length_sampler_rng.get_state()),
    }


def restore_rng(rng: dict, length_sampler_rng: np.random.RandomState) -> None:
    def numpy_state(d):
        return ("MT19937", d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached"])

    torch.set_rng_state(rng["torch"])
    np.random.set_state(numpy_state(rng["numpy"]))
    random.setstate((rng["python_version"], tuple(rng["python"]), rng["python_gauss"]))  # JSON gave lists
    length_sampler_rng.set_state(numpy_state(rng["lengths"]))


def _clone(obj):
    if torch.is_tensor(obj):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(v) for v in obj)
    return obj


def take_snapshot(step, kl_coef, model, optimizer, length_sampler_rng, history: list[dict]) -> Snapshot:
    """An in-memory copy (LoRA + value head + Adam state: tens of MB) of the state after a finished step."""
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return Snapshot(
        step=step,
        kl_coef=float(kl_coef),
        trainable=trainable,
        optimizer=_clone(optimizer.state_dict()),
        rng=capture_rng(length_sampler_rng),
        history=[dict(h) for h in history],
    )


def _pack(obj, tensors: dict) -> object:
    """Tensors go to a flat dict; everything else to JSON. torch 1.13's weights_only loader
    refuses Python floats, so scalars travel as a JSON string."""
    if torch.is_tensor(obj):
        key = str(len(tensors))
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_pack(k, tensors), _pack(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_pack(v, tensors) for v in obj]
    return obj


def _unpack(obj, tensors: dict) -> object:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        return {_unpack(k, tensors): _unpack(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unpack(v, tensors) for v in obj]
    return obj


KEEP = 2  # checkpoints kept; one more exists while the next is written


def write(directory: Path, snapshot: Snapshot, keep: int = KEEP) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{PREFIX}{snapshot.step:06d}"
    data = to_bytes(snapshot)
    with writing(f"the checkpoint of step {snapshot.step} ({size_text(len(data))})", directory):
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=directory))
        try:
            with open(tmp / STATE_FILE, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            if snapshot.settings:
                (tmp / SETTINGS_FILE).write_text(json.dumps(snapshot.settings, indent=2, sort_keys=True))
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # the older checkpoints are untouched
            raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(directory.glob(f"{PREFIX}*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def to_bytes(snapshot: Snapshot) -> bytes:
    """A snapshot as the bytes of its `state.pt` (also how rank 0 hands one to the other ranks)."""
    tensors: dict[str, torch.Tensor] = {}
    meta = json.dumps(_pack(snapshot.to_dict(), tensors))
    buffer = io.BytesIO()
    torch.save({"meta": meta, "tensors": tensors}, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes) -> Snapshot:
    """The inverse of `to_bytes`, loaded without unpickling anything but tensors; raises
    `UnusableCheckpoint` with the reason."""
    return _decode(io.BytesIO(data))


def read(folder: Path) -> Snapshot:
    """One checkpoint folder; raises `UnusableCheckpoint` with the reason."""
    if not (folder / STATE_FILE).is_file():
        raise UnusableCheckpoint(f"it has no {STATE_FILE}")
    return _decode(folder / STATE_FILE)


def _decode(source) -> Snapshot:
    try:
        saved = load_tensors(source)
    except UnsafeFile as exc:
        raise UnusableCheckpoint(
            "it holds objects other than tensors (not loaded: they could run code)"
        ) from exc
    except DamagedFile as exc:
        raise UnusableCheckpoint(f"it is damaged ({exc})") from exc
    try:
        return Snapshot(**_unpack(json.loads(saved["meta"]), saved["tensors"]))
    except Exception as exc:  # noqa: BLE001 - readable tensors, but not our layout
        raise UnusableCheckpoint(f"it is not a checkpoint of this job ({type(exc).__name__})") from exc


class UnusableCheckpoint(Exception):
    pass


def latest(directory: Path) -> Snapshot | None:
    """The newest usable checkpoint, or None when there is none at all. Unfinished temporaries
    are ignored; each unusable checkpoint is skipped with a warning, and when none is usable
    the job fails with the reasons (a `JobInputError`)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    skipped = []
    for folder in sorted(directory.glob(f"{PREFIX}*"), reverse=True):
        try:
            snapshot = read(folder)
        except UnusableCheckpoint as exc:
            log.warning("skipping checkpoint %s: %s", folder, exc)
            skipped.append(f"{folder.name}: {exc}")
            continue
        return snapshot
    if skipped:
        raise JobInputError(
            f"no checkpoint in {directory} can be used ({'; '.join(skipped)}). Delete them to train "
            "from step 0, or restore good copies"
        )
    return None


def recorded_settings(directory: Path) -> tuple[Path, dict] | None:
    """The settings the newest checkpoint that recorded them was written with, and its folder;
    None when there is none (no checkpoint, or only ones from before settings were recorded).
    Every checkpoint of a run records the same, so a damaged state.pt beside them does not matter."""
    for folder in sorted(Path(directory).glob(f"{PREFIX}*"), reverse=True):
        try:
            settings = json.loads((folder / SETTINGS_FILE).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(settings, dict):
            return folder, settings
    return None


def load_trainable(model, trainable: dict[str, torch.Tensor]) -> None:
    """Copy a snapshot's trainable weights into `model`."""
    params = dict(model.named_parameters())
    missing = set(trainable) - set(params)
    if missing:
        raise ValueError(f"checkpoint does not match the model: unknown parameters {sorted(missing)[:3]}")
    with torch.no_grad():
        for name, value in trainable.items():
            params[name].copy_(value)


def restore(snapshot: Snapshot, model, optimizer, length_sampler_rng) -> None:
    load_trainable(model, snapshot.trainable)
    optimizer.load_state_dict(snapshot.optimizer)
    restore_rng(snapshot.rng, length_sampler_rng)
