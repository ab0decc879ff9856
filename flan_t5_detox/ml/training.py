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

        Rank 0 reads it and hands it to the other ranks, so every rank resumes the same state
        whatever the world size the checkpoint was written with. metrics.jsonl is rewritten
        from the checkpoint's history: on a fresh instance (only checkpoints/ restored) it is
        rebuilt whole, and steps past the checkpoint are redone."""
        world = self.trainer.world
        snapshot = checkpoint.latest(self.checkpoint_dir) if world.is_main else None
        shared = world.from_main(None if snapshot is None else checkpoint.to_bytes(snapshot))
        if shared is not None:
            snapshot = checkpoint.from_bytes(shared) if snapshot is None else snapshot
            self.trainer.restore(snapshot)
            log.info("resumed from checkpoint at step %d", snapshot.step)
        if world.is_main:
            self.metrics.rewrite(self.trainer.history)
        return self.trainer.step

    def _checkpoint(self) -> Path | None:
        """The last finished step, written by rank 0 (the other ranks hold the same state)."""
        if self.trainer.world.is_main:
            return checkpoint.write(self.checkpoint_dir, self.trainer.last_good)
        return None

    def run(self, max_steps: int) -> RunOutcome:
        from tqdm import tqdm

        trainer, main = self.trainer, self.trainer.world.is_main
        with SigtermGuard():
            try:
                with tqdm(
                    total=max_steps, initial=trainer.step, desc="PPO", file=sys.stderr, disable=not main
                ) as bar:
                    while trainer.step < max_steps:
                        result = trainer.run_step()
                        bar.update(1)
                        if not main:
                            continue
                        self.metrics.append(result.metrics)
                        print(format_metrics_line(result.metrics), flush=True)
                        if self.after_step is not None:
                            self.after_step(trainer.step)
                        if self.checkpoint_every and trainer.step % self.checkpoint_every == 0:
                            self._checkpoint()
            except Preempted:
                path = self._checkpoint()
                log.warning("SIGTERM: checkpointed step %d (%s); exiting", trainer.last_good.step, path)
                return RunOutcome(trainer.last_good.step, preempted=True)
            except TrainingDiverged as exc:
                self._checkpoint()
                raise RuntimeError(f"{exc}; last good step {trainer.last_good.step} is checkpointed") from exc
            except RuntimeError as exc:
                if trainer.world.size == 1:
                    raise
                # gloo's error when a peer stopped, died or stalled past the collective timeout
                self._checkpoint()
                raise PeerLost(
                    f"rank {trainer.world.rank} of {trainer.world.size} lost its peers during step "
                    f"{trainer.step + 1} ({str(exc).splitlines()[0]}); step {trainer.last_good.step} "
                    "is checkpointed, and a rerun resumes from it on any number of instances"
                ) from exc
        self._checkpoint()
        return RunOutcome(trainer.step, preempted=False)


class PeerLost(RuntimeError):
    """Another rank of a data-parallel run stopped answering."""
