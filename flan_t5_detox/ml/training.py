"""Running PPO steps to the end: resume from the newest checkpoint, log each step's metrics (the
metrics line with the progress, metrics.jsonl, TensorBoard), keep the best evaluated step
(`keep_best`), checkpoint on a cadence, and turn SIGTERM (job stop, spot interruption) into a
checkpoint of the last finished step."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from flan_t5_detox.contract.metrics import MetricsLog, format_metrics_line
from flan_t5_detox.contract.progress import Progress
from flan_t5_detox.ml import checkpoint
from flan_t5_detox.ml.events import EventLog
from flan_t5_detox.ml.heldout import BestRule
from flan_t5_detox.ml.ppo import DetoxTrainer, TrainingDiverged

log = logging.getLogger(__name__)


class Preempted(Exception):
    """SIGTERM arrived."""


class SigtermGuard:
    """Turns SIGTERM into `Preempted` raised in the main thread while training runs, at once
    (a step is cut short: its state is dropped for the last finished one) or, inside
    `deferred()`, when the section ends."""

    def __enter__(self):
        self.received = False
        self._deferring = False

        def handler(signum, frame):
            # One-shot: a second SIGTERM must not interrupt writing the checkpoint.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self.received = True
            if not self._deferring:
                raise Preempted()

        self._previous = signal.signal(signal.SIGTERM, handler)
        return self

    @contextlib.contextmanager
    def deferred(self):
        """A section that SIGTERM must not cut: code that keeps state outside the step. Raised
        inside a library's call, `Preempted` can leave it broken: TensorBoard's writer, cut
        after queueing a record but before waking its thread, makes the next flush wait for
        the thread's own timer (two minutes)."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self.received:
            raise Preempted()

    def settle(self) -> bool:
        """Whether SIGTERM arrived, counting one that came while the main thread waited in C
        (a collective) and whose handler has not run yet: `signal.signal` runs pending handlers
        first, so that one raises `Preempted` here."""
        signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGTERM))
        return self.received

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._previous)
        return False


@dataclass
class Best:
    """keep_best's choice so far: an evaluated step and its trainable weights."""

    step: int
    trainable: dict[str, torch.Tensor]


@dataclass
class RunOutcome:
    steps: int  # PPO steps finished, this run and earlier ones
    preempted: bool  # stopped by SIGTERM; the last finished step is checkpointed
    best: Best | None = None  # keep_best: the step `best_rule` chose, on rank 0
    start: dict = dataclasses.field(default_factory=dict)  # the step-0 held-out figures, if measured


class TrainingRun:
    """A DetoxTrainer driven to `max_steps`, its state kept in `checkpoint_dir`.

    `after_step` is called with the step number once a step has finished; `events`, the folder of
    the TensorBoard event files; `best_rule`, keep_best's rule. Rank 0 alone writes and keeps."""

    def __init__(
        self,
        trainer: DetoxTrainer,
        checkpoint_dir: Path,
        metrics: MetricsLog,
        checkpoint_every: int,
        after_step: Callable[[int], None] | None = None,
        events: Path | None = None,
        best_rule: BestRule | None = None,
    ):
        self.trainer, self.checkpoint_dir = trainer, Path(checkpoint_dir)
        self.metrics, self.checkpoint_every = metrics, checkpoint_every
        self.after_step = after_step
        self.events_dir, self.events = events, None
        self.best_rule, self.best = best_rule, None

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
            if snapshot.best_step:
                self.best = Best(snapshot.best_step, snapshot.best_trainable)
            log.info("resumed from checkpoint at step %d", snapshot.step)
        if world.is_main:
            self.metrics.rewrite(self.trainer.history)
        return self.trainer.step

    def _checkpoint(self) -> Path | None:
        """The last finished step and the best so far, written by rank 0 (the other ranks hold
        the same state)."""
        if not self.trainer.world.is_main:
            return None
        snapshot = self.trainer.last_good
        if self.best is not None:
            snapshot = dataclasses.replace(
                snapshot, best_step=self.best.step, best_trainable=self.best.trainable
            )
        return checkpoint.write(self.checkpoint_dir, snapshot)

    def _open_events(self, start: dict) -> None:
        """TensorBoard's event log, from the step this run starts after. In an empty folder (a
        fresh instance given only the checkpoints) the steps done so far are written first."""
        trainer = self.trainer
        self.events = EventLog(self.events_dir, trainer.step)
        if self.events.fresh or not trainer.step:
            for record in ([start] if start else []) + trainer.history:
                self.events.write(record)

    def _keep_best(self, start: dict) -> None:
        """Take the step just finished as the best when the rule now chooses it."""
        chosen = self.best_rule.choose(self.trainer.history, start)
        if chosen is not None and chosen["step"] == self.trainer.step:
            self.best = Best(self.trainer.step, self.trainer.last_good.trainable)
            log.info("step %d is the best so far by keep_best's rule", self.trainer.step)

    def _steps(self, max_steps: int, start: dict, progress: Progress, sigterm: SigtermGuard) -> None:
        """PPO steps to `max_steps`; rank 0 logs, keeps the best and checkpoints after each."""
        from tqdm import tqdm

        trainer, main = self.trainer, self.trainer.world.is_main
        bar = tqdm(total=max_steps, initial=trainer.step, desc="PPO", file=sys.stderr, disable=not main)
        with bar:
            while trainer.step < max_steps:
                result = trainer.run_step()
                with sigterm.deferred():  # the finished step's records are written whole
                    bar.update(1)
                    if main:
                        self._record(result.metrics, start, progress)

    def _record(self, metrics: dict, start: dict, progress: Progress) -> None:
        """A finished step's metrics line, metrics.jsonl and events, keep_best's choice, the
        after-step hook and the checkpoint on its cadence."""
        step = self.trainer.step
        self.metrics.append(metrics)
        print(format_metrics_line(metrics, progress.done(step)), flush=True)
        if self.events is not None:
            self.events.write(metrics)
        if self.best_rule is not None and start:
            self._keep_best(start)
        if self.after_step is not None:
            self.after_step(step)
        if self.checkpoint_every and step % self.checkpoint_every == 0:
            self._checkpoint()

    def run(self, max_steps: int) -> RunOutcome:
        trainer, main = self.trainer, self.trainer.world.is_main
        start = trainer.start_figures()  # the step-0 held-out figures ({} without): every rank measures
        if main and start and not trainer.step:
            print(format_metrics_line(start), flush=True)
        if main and self.events_dir is not None:
            self._open_events(start)
        if self.best_rule is not None and not start:
            log.warning("keep_best: the starting summarizer was never measured; model/ gets the last step")
        progress = Progress(max_steps, "step", first=trainer.step)
        with SigtermGuard() as sigterm:
            try:
                try:
                    self._steps(max_steps, start, progress, sigterm)
                except RuntimeError as exc:
                    # With peers, SIGTERM stops every rank, each at its own point: a rank waiting in
                    # a collective sees the peers that left as an error. That is the same stop.
                    if trainer.world.size > 1 and not isinstance(exc, TrainingDiverged) and sigterm.settle():
                        raise Preempted() from exc
                    raise
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
            finally:
                if self.events is not None:
                    self.events.close()
        self._checkpoint()
        return RunOutcome(trainer.step, preempted=False, best=self.best, start=start)


class PeerLost(RuntimeError):
    """Another rank of a data-parallel run stopped answering."""
