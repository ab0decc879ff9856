"""A full disk: every write of a job's results fails clearly, and a run that cannot fit its
volume is refused before any model loads.

`writing(what, where)` wraps one write: a "no space left" or "quota exceeded" error becomes a
`DiskFull` naming what was being written, where, the free space there and the fix; any other
error passes through. The writer's own cleanup (its staging folder or temporary file) runs
first, since the error leaves through it. `DiskFull` is a `JobInputError`: the job exits 2, the
code of every failure whose fix is the user's (here: a larger volume, or fewer files kept), and
its failure file holds this one line, never raw exception text.

`check_room` is the preflight: the bytes a run will write (`DiskNeed`, from the model's and the
adapter's sizes and the settings) against the free space of each file system they go to.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from flan_t5_detox.contract.failure import JobInputError

log = logging.getLogger(__name__)

FULL = (errno.ENOSPC, errno.EDQUOT)
# What a user does about it: SageMaker's volume is the launcher's --volume-size (VolumeSizeInGB).
TRAIN_FIX = (
    "raise the job's volume (detox-launch --volume-size, SageMaker's VolumeSizeInGB) or keep fewer files "
    "(a larger checkpoint_every or save_adapter_every, or save_adapter_every=0). The last complete "
    "checkpoint is intact: a rerun with room resumes from it"
)
EVALUATE_FIX = "raise the processing job's volume (detox-launch --volume-size, SageMaker's VolumeSizeInGB)"
WARN_SHARE = 0.8  # warn when a run's writes would take more than this share of the free space


class DiskFull(JobInputError):
    """The volume cannot hold what the job must write."""

    prefix = "Disk full"


def size_text(count: float) -> str:
    """Bytes for a reader: 512 B, 3.1 MB, 2.40 GB."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if count >= scale:
            return f"{count / scale:.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{int(count)} B"


def _existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists (where its file system is read)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Free space an unprivileged writer may use on the file system that holds `path`."""
    stats = os.statvfs(_existing(path))
    return stats.f_bavail * stats.f_frsize


def device(path: Path) -> int:
    return _existing(path).stat().st_dev


@contextmanager
def writing(what: str, where: Path, fix: str = TRAIN_FIX) -> Iterator[None]:
    """Turn a full disk (or quota) during the block into a `DiskFull` that names `what`,
    `where` and the free space there; other errors pass as they are."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in FULL:
            raise
        raise DiskFull(
            f"{os.strerror(exc.errno)}: cannot write {what} to {where} "
            f"({size_text(free_bytes(where))} free there once its partial files were removed); {fix}"
        ) from exc


# -- the preflight -----------------------------------------------------------------------------
MODEL_WEIGHTS = ("model*.safetensors", "pytorch_model*.bin")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def parameter_count(folder: Path, patterns: tuple[str, str] = MODEL_WEIGHTS) -> int | None:
    """Parameters in `folder`'s weights: safetensors files (counted from their headers) else
    `.bin` files (from their size, 4 bytes a parameter), sharded ones summed; None when it has
    neither."""
    folder = Path(folder)
    safetensors = sorted(folder.glob(patterns[0]))
    if safetensors:
        return sum(_safetensors_count(path) for path in safetensors)
    bins = sorted(folder.glob(patterns[1]))
    return sum(path.stat().st_size for path in bins) // 4 if bins else None


def _safetensors_count(path: Path) -> int:
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    count = 0
    for name, entry in header.items():
        if name != "__metadata__":
            numel = 1
            for dim in entry["shape"]:
                numel *= dim
            count += numel
    return count


@dataclass
class DiskNeed:
    """Bytes a run will add, by the folder they go to."""

    by_folder: dict[Path, int] = field(default_factory=dict)
    detail: dict[Path, str] = field(default_factory=dict)

    def add(self, folder: Path, count: int, what: str) -> None:
        folder = Path(folder)
        self.by_folder[folder] = self.by_folder.get(folder, 0) + int(count)
        self.detail[folder] = ", ".join(filter(None, [self.detail.get(folder, ""), what]))


def tokenizer_bytes(folder: Path) -> int:
    names = (
        "tokenizer.json",
        "spiece.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.json",
    )
    return sum((Path(folder) / name).stat().st_size for name in names if (Path(folder) / name).is_file())


def training_need(
    config,
    adapter_dir: Path,
    base_model: Path,
    checkpoint_dir: Path,
    model_dir: Path,
    output_data_dir: Path,
    keep: int,
) -> DiskNeed | None:
    """What a train job writes, or None when the adapter's size is unknown. A checkpoint holds
    the trainable LoRA (the size of the summarization adapter, whose shape it takes) with its two
    Adam moments and each step's metrics; `keep` of them stay and one more is written before the
    oldest goes. A kept adapter and model/ hold the combined adapter (twice the rank)."""
    lora = parameter_count(adapter_dir, ADAPTER_WEIGHTS)
    if lora is None:
        return None
    steps = config.max_ppo_steps
    metrics = 1024 * steps  # a metrics line, and its copy in every checkpoint's history, < 1 kB
    checkpoint = 3 * 4 * lora + metrics + 64 * 1024
    existing = len(list(Path(checkpoint_dir).glob("step-*"))) if Path(checkpoint_dir).is_dir() else 0
    written = steps // config.checkpoint_every + 1 if config.checkpoint_every else 1
    adapter = 2 * 4 * lora + 16 * 1024
    kept = steps // config.save_adapter_every if config.save_adapter_every else 0
    need = DiskNeed()
    need.add(checkpoint_dir, max(0, min(written, keep + 1) - existing) * checkpoint, "checkpoints")
    if kept:
        need.add(checkpoint_dir, kept * adapter, f"{kept} kept adapter(s)")
    model = adapter + tokenizer_bytes(base_model) + (kept * adapter)
    need.add(model_dir, model, "model/")  # staged inside model/, then renamed into place
    need.add(output_data_dir, metrics + 64 * 1024, "metrics.jsonl and the summary")
    return need


def evaluation_need(samples: int, steps: int, max_new_tokens: int, report_dir: Path) -> DiskNeed:
    """What an evaluation writes into its report folder: per dialogue and model (before, after and
    each kept step) its text and figures in the CSV, the JSON and the part, plus the plots."""
    per_row = 2048 + 3 * 8 * max_new_tokens  # the dialogue and reference, responses, the figures
    need = DiskNeed()
    need.add(report_dir, 8 * 2**20 + samples * (2 + steps) * per_row, "the report")
    return need


def check_room(need: DiskNeed, fix: str, refuse: bool = True) -> None:
    """Fail (`DiskFull`) when a file system cannot take what goes to it, warn when it is close."""
    by_device: dict[int, list[Path]] = {}
    for folder in need.by_folder:
        by_device.setdefault(device(folder), []).append(folder)
    for folders in by_device.values():
        total = sum(need.by_folder[f] for f in folders)
        free = free_bytes(folders[0])
        parts = "; ".join(f"{need.detail[f]} in {f}: {size_text(need.by_folder[f])}" for f in folders)
        if total > free:
            message = (
                f"the run will write about {size_text(total)} ({parts}), and its volume has "
                f"{size_text(free)} free: {fix}"
            )
            if refuse:
                raise DiskFull(message)
            log.warning("%s (preflight=warn: running anyway)", message)
        elif total > WARN_SHARE * free:
            log.warning(
                "disk: the run will write about %s (%s) of the %s free on its volume; close to full",
                size_text(total), parts, size_text(free),
            )  # fmt: skip
