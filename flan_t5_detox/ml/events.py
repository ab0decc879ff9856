"""TensorBoard event files of a training run: every figure of every step's metrics as a scalar,
under `output/tensorboard/` (SageMaker's TensorBoardOutputConfig syncs that folder to S3 while
the job runs; `tensorboard --logdir` reads it locally). Rank 0 alone writes them.

Tags group the figures: `ppo/<name>` for the step's PPO figures, `heldout/<name>` for the held-out
evaluation, `time/<phase>` for the timings. A run first marks where it starts (TensorBoard's purge
step: after the checkpoint it resumed from, or 0), so the steps it redoes replace those of an
earlier attempt instead of doubling them.
"""

from __future__ import annotations

import math
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

EVENT_FILE_PATTERN = "events.out.tfevents.*"


def tag(name: str) -> str:
    """A metric's TensorBoard tag."""
    for prefix, group in (("heldout_", "heldout"), ("time_", "time")):
        if name.startswith(prefix):
            return f"{group}/{name.removeprefix(prefix)}"
    return f"ppo/{name}"


class EventLog:
    """Scalars of step records ({"step": k, name: value, ...}) into `folder`'s event files."""

    def __init__(self, folder: Path, resumed_at: int = 0):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.fresh = not any(folder.glob(EVENT_FILE_PATTERN))
        # purge_step: events at this step and later in older files are dropped by TensorBoard.
        self.writer = SummaryWriter(str(folder), purge_step=resumed_at + 1 if resumed_at else 0)

    def write(self, record: dict) -> None:
        step = int(record["step"])
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(tag(name), float(value), step)
        self.writer.flush()  # SageMaker uploads what is on disk; a kill must not lose a step

    def close(self) -> None:
        self.writer.close()
