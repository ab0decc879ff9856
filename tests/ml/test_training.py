"""Running steps to the end (`training.TrainingRun`), on a stand-in trainer whose step is a counter:
the checkpoint cadence, resuming with the history from the checkpoint, how a diverged step
and SIGTERM end a run with the last finished step on disk, keep_best's choice, the TensorBoard
event files and the progress in the metrics line."""

import functools
import os
import re
import shutil
import signal
import time

import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from flan_t5_detox.contract.metrics import MetricsLog
from flan_t5_detox.ml import checkpoint
from flan_t5_detox.ml.distributed import World
from flan_t5_detox.ml.heldout import BestRule
from flan_t5_detox.ml.ppo import StepResult, TrainingDiverged
from flan_t5_detox.ml.training import TrainingRun
from tests.helpers import read_events
from tests.ml.ranks import on_gloo_ranks


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

    def start_figures(self) -> dict:
        return {}  # no held-out prompts

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


class SummingTrainer(CountingTrainer):
    """A stand-in on a real gloo world: every step sums a tensor over the ranks, as PPO's do."""

    def __init__(self, world, on_step):
        super().__init__(on_step)
        self.world = world

    def run_step(self) -> StepResult:
        self.on_step(self.step + 1)
        self.world.sum(torch.ones(1))
        return super().run_step()


def _stopped_while_a_peer_waits(folder: str, world: World) -> dict:
    """At step 3 rank 1 waits in the step's sum; rank 0 signals both ranks, then leaves the group
    from the SIGTERM handler's `Preempted`, before the sum. Rank 1's Python handler cannot run
    while it waits in C: it sees the sum fail first."""
    pids = [int(p) for p in world.gather(torch.tensor([os.getpid()]))]

    def on_step(step):
        if step == 3 and world.is_main:
            time.sleep(1)  # rank 1 is in the sum by now
            os.kill(pids[1], signal.SIGTERM)
            os.kill(pids[0], signal.SIGTERM)

    metrics = MetricsLog(f"{folder}/metrics-{world.rank}.jsonl")
    outcome = TrainingRun(SummingTrainer(world, on_step), f"{folder}/checkpoints", metrics, 0).run(5)
    return {"steps": outcome.steps, "preempted": outcome.preempted}


def test_sigterm_is_a_stop_on_every_rank_also_on_one_that_waited_in_a_collective(tmp_path):
    ranks = on_gloo_ranks(functools.partial(_stopped_while_a_peer_waits, str(tmp_path)), tmp_path)
    # Rank 1 reads the failed sum as the SIGTERM's stop, not as a lost peer (PeerLost, exit 1).
    assert ranks == [{"steps": 2, "preempted": True}] * 2
    assert checkpoint.latest(tmp_path / "checkpoints").step == 2


class EvaluatedTrainer(CountingTrainer):
    """A stand-in whose steps are measured on held-out prompts: `figures[step]` is that step's
    (toxicity, ROUGE-L); the start is step 0's. Its weights at step k are all k."""

    def __init__(self, figures: dict[int, tuple[float, float]]):
        self.figures = figures
        super().__init__()

    def start_figures(self) -> dict:
        toxicity, rouge = self.figures[0]
        return {"step": 0, "heldout_toxicity": toxicity, "heldout_rouge_l": rouge}

    def run_step(self) -> StepResult:
        self.step += 1
        record = {"step": self.step}
        if self.step in self.figures:
            record["heldout_toxicity"], record["heldout_rouge_l"] = self.figures[self.step]
        self.history.append(record)
        self.last_good = self.snapshot()
        return StepResult(dict(record))


# Step 3 has the lowest toxicity but lost 0.05 of ROUGE-L; step 4, the last, is more toxic than 2.
FIGURES = {0: (0.20, 0.75), 2: (0.10, 0.74), 3: (0.05, 0.70), 4: (0.12, 0.76)}


def test_keep_best_chooses_by_its_rule_not_the_last_step_and_a_restart_keeps_it(tmp_path):
    rule = BestRule(max_rouge_drop=0.02)
    metrics = MetricsLog(tmp_path / "out" / "metrics.jsonl")
    run = TrainingRun(EvaluatedTrainer(FIGURES), tmp_path / "checkpoints", metrics, 1, best_rule=rule)
    outcome = run.run(3)
    assert outcome.best.step == 2  # step 3 is less toxic, but its ROUGE-L fell 0.05 > 0.02
    assert torch.equal(outcome.best.trainable["w"], torch.full((2,), 2.0))  # step 2's weights
    assert outcome.start == {"step": 0, "heldout_toxicity": 0.20, "heldout_rouge_l": 0.75}
    assert checkpoint.latest(tmp_path / "checkpoints").best_step == 2

    # A restarted job gets the best so far from the checkpoint; step 4, the last, is worse than it.
    again = TrainingRun(EvaluatedTrainer(FIGURES), tmp_path / "checkpoints", metrics, 1, best_rule=rule)
    assert again.resume() == 3 and again.best.step == 2
    outcome = again.run(4)
    assert (outcome.steps, outcome.best.step) == (4, 2)
    assert torch.equal(outcome.best.trainable["w"], torch.full((2,), 2.0))


def test_the_best_rule():
    rule, start = BestRule(max_rouge_drop=0.02), {"heldout_rouge_l": 0.75}

    def record(step, toxicity, rouge):
        return {"step": step, "heldout_toxicity": toxicity, "heldout_rouge_l": rouge}

    assert rule.choose([{"step": 1}], start) is None  # nothing was measured
    history = [record(1, 0.1, 0.74), {"step": 2}, record(3, 0.1, 0.75), record(4, 0.01, 0.6)]
    assert rule.choose(history, start)["step"] == 1  # a tie in toxicity goes to the earlier step
    # No step within the bound: the least damaged one.
    assert rule.choose([record(1, 0.1, 0.70), record(2, 0.05, 0.72)], start)["step"] == 2
    assert "at most 0.02 below the starting summarizer's" in rule.statement()


def test_every_step_and_every_held_out_evaluation_reach_tensorboard_and_a_resume_replaces_redone_steps(
    tmp_path,
):
    events = tmp_path / "tensorboard"
    metrics = MetricsLog(tmp_path / "out" / "metrics.jsonl")
    TrainingRun(EvaluatedTrainer(FIGURES), tmp_path / "checkpoints", metrics, 2, events=events).run(3)
    # Killed after step 3's events, before its checkpoint: a restart redoes step 3, then step 4.
    shutil.rmtree(tmp_path / "checkpoints" / "step-000003")
    again = TrainingRun(EvaluatedTrainer(FIGURES), tmp_path / "checkpoints", metrics, 2, events=events)
    assert again.resume() == 2
    again.run(4)

    scalars = read_events(events)
    assert [e.step for e in scalars["heldout/toxicity"]] == [0, 2, 3, 4]
    assert [e.value for e in scalars["heldout/toxicity"]] == pytest.approx([0.20, 0.10, 0.05, 0.12])
    assert [e.step for e in scalars["heldout/rouge_l"]] == [0, 2, 3, 4]


def test_sigterm_while_a_step_is_recorded_ends_the_run_once_its_records_are_whole(tmp_path, monkeypatch):
    # SIGTERM arrives inside TensorBoard's writer, as step 2's first scalar is added. Raised there,
    # the stop cut the step's events short, and could leave the writer's queue unwoken, so that
    # closing it waited two minutes for the writer thread's timer.
    add_scalar = SummaryWriter.add_scalar

    def signalled(writer, tag, value, global_step=None, *args, **kwargs):
        if global_step == 2 and not signalled.sent:
            signalled.sent = True
            os.kill(os.getpid(), signal.SIGTERM)
        return add_scalar(writer, tag, value, global_step, *args, **kwargs)

    signalled.sent = False
    monkeypatch.setattr(SummaryWriter, "add_scalar", signalled)
    events = tmp_path / "tensorboard"
    metrics = MetricsLog(tmp_path / "out" / "metrics.jsonl")
    run = TrainingRun(EvaluatedTrainer(FIGURES), tmp_path / "checkpoints", metrics, 0, events=events)
    started = time.monotonic()
    outcome = run.run(4)
    assert time.monotonic() - started < 30
    assert (outcome.steps, outcome.preempted) == (2, True)
    assert checkpoint.latest(tmp_path / "checkpoints").step == 2
    scalars = read_events(events)
    assert [e.step for e in scalars["heldout/toxicity"]] == [0, 2]  # step 2's records are whole
    assert [e.step for e in scalars["heldout/rouge_l"]] == [0, 2]


def test_the_metrics_line_says_how_far_the_run_is_and_how_long_is_left(tmp_path, capsys):
    run, _ = _run(tmp_path, CountingTrainer())
    run.run(4)
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"\[metrics\] step=3 \| step 3 of 4, [0-9.e-]+ s each, about 0:00:00 left", lines[2])
