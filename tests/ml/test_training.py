"""Running steps to the end (`training.TrainingRun`), on a stand-in trainer whose step is a counter:
the checkpoint cadence, resuming with the history from the checkpoint, and how a diverged step
and SIGTERM end a run with the last finished step on disk."""

import os
import signal

import pytest
import torch

from flan_t5_detox.contract.metrics import MetricsLog
from flan_t5_detox.ml import checkpoint
from flan_t5_detox.ml.distributed import World
from flan_t5_detox.ml.ppo import StepResult, TrainingDiverged
from flan_t5_detox.ml.training import TrainingRun


class CountingTrainer:
    """DetoxTrainer's surface for `TrainingRun`: step k's metrics are {"step": k}; `on_step`
    runs at the start of each step with its number (it may raise or signal)."""

    def __init__(self, on_step=lambda step: None):
        self.world, self.step, self.history, self.on_step = World(), 0, [], on_step
        self.last_good = self.snapshot()

    def snapshot(self) -> checkpoint.Snapshot:
        return checkpoint.Snapshot(
            self.step, 0.1, {"w": torch.full((2,), float(self.step))}, {}, {}, list(self.history)
        )

    def restore(self, snap: checkpoint.Snapshot) -> None:
        self.step, self.history, self.last_good = snap.step, list(snap.history), snap

    def run_step(self) -> StepResult:
        self.on_step(self.step + 1)
        self.step += 1
        self.history.append({"step": self.step})
        self.last_good = self.snapshot()
        return StepResult(dict(self.history[-1]))


def _run(tmp_path, trainer, checkpoint_every=0, after_step=None):
    metrics = MetricsLog(tmp_path / "out" / "metrics.jsonl")
    return TrainingRun(trainer, tmp_path / "checkpoints", metrics, checkpoint_every, after_step), metrics


def _steps_on_disk(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))


def test_a_run_logs_every_step_and_checkpoints_on_its_cadence_and_at_the_end(tmp_path, capsys, monkeypatch):
    seen, written = [], []
    write = checkpoint.write

    def counted_write(directory, snap, keep=2):
        written.append(snap.step)
        return write(directory, snap, keep)

    monkeypatch.setattr(checkpoint, "write", counted_write)
    run, metrics = _run(tmp_path, CountingTrainer(), checkpoint_every=2, after_step=seen.append)
    assert run.resume() == 0
    outcome = run.run(5)
    assert (outcome.steps, outcome.preempted) == (5, False)
    assert [m["step"] for m in metrics.read()] == [1, 2, 3, 4, 5] and seen == [1, 2, 3, 4, 5]
    assert written == [2, 4, 5]
    assert _steps_on_disk(tmp_path) == ["step-000004", "step-000005"]
    assert capsys.readouterr().out.count("\n") == 5  # one metrics line a step


def test_resume_continues_from_the_newest_checkpoint_with_its_history(tmp_path):
    first, metrics = _run(tmp_path, CountingTrainer(), checkpoint_every=3)
    first.run(5)  # checkpoints at 3 and 5
    for folder in (tmp_path / "checkpoints").glob("step-000005"):
        (folder / checkpoint.STATE_FILE).unlink()  # the newest is unusable: step 3 is the newest good one
    metrics.append({"step": 6})  # a step past every checkpoint

    trainer = CountingTrainer()
    again, metrics = _run(tmp_path, trainer)
    assert again.resume() == 3 and trainer.step == 3
    assert metrics.read() == [{"step": 1}, {"step": 2}, {"step": 3}]  # rebuilt from the checkpoint
    assert again.run(4).steps == 4
    assert [m["step"] for m in metrics.read()] == [1, 2, 3, 4]


def test_a_diverged_step_fails_the_run_with_the_last_good_step_checkpointed(tmp_path):
    def diverge(step):
        if step == 3:
            raise TrainingDiverged("mean KL 9 exceeded max_kl=1 at step 3")

    run, _ = _run(tmp_path, CountingTrainer(diverge))
    with pytest.raises(RuntimeError, match="exceeded max_kl=1 at step 3; last good step 2 is checkpointed"):
        run.run(5)
    assert checkpoint.latest(tmp_path / "checkpoints").step == 2


def test_sigterm_mid_step_checkpoints_the_last_finished_step_and_ends_the_run(tmp_path):
    def sigterm(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    run, metrics = _run(tmp_path, CountingTrainer(sigterm))
    outcome = run.run(5)
    assert (outcome.steps, outcome.preempted) == (2, True)
    assert checkpoint.latest(tmp_path / "checkpoints").step == 2
    assert [m["step"] for m in metrics.read()] == [1, 2]
    assert signal.getsignal(signal.SIGTERM) == before  # the guard puts the previous handler back
