"""Running PPO steps to the end: resume from the newest checkpoint, log each step's metrics,
checkpoint on a cadence, and turn SIGTERM (job stop, spot interruption) into a checkpoint of
the last finished step."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flan_t5_detox.contract.metrics import MetricsLog, format_metrics_line
from flan_t5_detox.ml import checkpoint
from flan_t5_detox.ml.ppo import DetoxTrainer, TrainingDiverged

log = logging.getLogger(__name__)


class Preempted(Exception):
    """SIGTERM arrived."""


class SigtermGuard:
    """Turns SIGTERM into `Preempted` raised in the main thread while training runs."""

    def __enter__(self):
        def handler(signum, frame):
            # One-shot: a second SIGTERM must not interrupt writing the checkpoint.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            raise Preempted()

        self._previous = signal.signal(signal.SIGTERM, handler)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._previous)
        return False


@dataclass
class RunOutcome:
    steps: int  # PPO steps finished, this run and earlier ones
    preempted: bool  # stopped by SIGTERM; the last finished step is checkpointed


class TrainingRun:
    """A DetoxTrainer driven to `max_steps`, its state kept in `checkpoint_dir`."""

    def __init__(
        self,
        trainer: DetoxTrainer,
        checkpoint_dir: Path,
        metrics: MetricsLog,
        checkpoint_every: int,
        after_step: Callable[[int], None] | None = None,
    ):
        self.trainer, self.checkpoint_dir = trainer, Path(checkpoint_dir)
        self.metrics, self.checkpoint_every = metrics, checkpoint_every
        self.after_step = after_step  # called with the step number once a step has finished

    def resume(self) -> int:
        """Continue from the newest checkpoint, if any; returns the step it starts after.

        metrics.jsonl is rewritten from the checkpoint's history: on a fresh instance (only
        checkpoints/ restored) it is rebuilt whole, and steps past the checkpoint are redone."""
        snapshot = checkpoint.latest(self.checkpoint_dir)
        if snapshot is not None:
            if not snapshot.history and snapshot.step:  # written before checkpoints carried it
                snapshot.history = [m for m in self.metrics.read() if m["step"] <= snapshot.step]
            self.trainer.restore(snapshot)
            log.info("resumed from checkpoint at step %d", snapshot.step)
        self.metrics.rewrite(self.trainer.history)
        return self.trainer.step

    def run(self, max_steps: int) -> RunOutcome:
        from tqdm import tqdm

        trainer = self.trainer
        with SigtermGuard():
            try:
                with tqdm(total=max_steps, initial=trainer.step, desc="PPO", file=sys.stderr) as bar:
                    while trainer.step < max_steps:
                        result = trainer.run_step()
                        self.metrics.append(result.metrics)
                        print(format_metrics_line(result.metrics), flush=True)
                        bar.update(1)
                        if self.after_step is not None:
                            self.after_step(trainer.step)
                        if self.checkpoint_every and trainer.step % self.checkpoint_every == 0:
                            checkpoint.write(self.checkpoint_dir, trainer.last_good)
            except Preempted:
                path = checkpoint.write(self.checkpoint_dir, trainer.last_good)
                log.warning("SIGTERM: wrote %s (step %d); exiting", path, trainer.last_good.step)
                return RunOutcome(trainer.last_good.step, preempted=True)
            except TrainingDiverged as exc:
                checkpoint.write(self.checkpoint_dir, trainer.last_good)
                raise RuntimeError(f"{exc}; last good step {trainer.last_good.step} is checkpointed") from exc
        checkpoint.write(self.checkpoint_dir, trainer.last_good)
        return RunOutcome(trainer.step, preempted=False)
