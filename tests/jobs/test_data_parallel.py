"""Data-parallel training for real: ranks as separate `detox-train` processes meeting over
loopback through torch.distributed (gloo), as the hosts of a multi-instance job do."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from peft import PeftModel
from transformers import AutoModelForSeq2SeqLM

from flan_t5_detox.contract.failure import DUMP_STACKS
from flan_t5_detox.contract.memory import MARKER
from flan_t5_detox.contract.metrics import METRIC_NAMES
from flan_t5_detox.ml import checkpoint
from tests.servers import free_port

TRAIN = [sys.executable, "-m", "detox_entrypoints.train"]
HOSTS = ("algo-1", "algo-2")
# Every global figure of a step but its step number and timings (those differ run to run).
FIGURES = tuple(name for name in METRIC_NAMES if name != "step" and not name.startswith("time_"))
SETTINGS = dict(max_ppo_steps=4, batch_size=8, mini_batch_size=4, ppo_epochs=2, learning_rate=3e-3)
# Held-out evaluation at steps 0, 2 and 4, in generation batches of 4: one per rank of two.
HELDOUT = dict(eval_every=2, eval_samples=8, generation_batch_size=4)


def _start(root, port, command=TRAIN, **env):
    """One host's job; the host names do not resolve here, so rank 0 is reached on loopback."""
    environment = dict(
        os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PYTHONUNBUFFERED="1", **env
    )
    return subprocess.Popen(
        [*command, "--ml-root", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
        start_new_session=True,  # its own process group, with its ranks: `_output` can end them all
    )


def _output(job, timeout) -> str:
    """The job's output once it ends; a job still running after `timeout` seconds fails the test
    with each of its processes' stacks (what it waits on), and is killed with its ranks, so none
    is left behind."""
    try:
        return job.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        host = psutil.Process(job.pid)
        for process in [host, *host.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):  # one that ended since: nothing to dump
                process.send_signal(DUMP_STACKS)  # one at a time: their dumps share the pipe
                time.sleep(0.5)
        os.killpg(job.pid, signal.SIGKILL)
        pytest.fail(f"the job did not end within {timeout} s:\n{job.communicate()[0][-12000:]}")


def _hosts(train_layout, name, **settings):
    return [train_layout(f"{name}-{host}", hosts=HOSTS, current_host=host, **settings) for host in HOSTS]


def _metrics(root):
    return [json.loads(x) for x in (root / "output" / "data" / "metrics.jsonl").read_text().splitlines()]


def _figures(rows):
    return [row[k] for row in rows for k in FIGURES if k in row]  # held-out ones: measured steps only


def _assert_same_run(got, expected):
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    assert [sorted(r) for r in got] == [sorted(r) for r in expected]  # the same figures measured
    # Float tolerance: the ranks sum in another order, and the difference grows step by step.
    assert _figures(got) == pytest.approx(_figures(expected), rel=1e-3, abs=1e-5)


def test_two_hosts_train_exactly_as_one_host_with_the_same_global_batch(train_layout, tiny_models):
    one = train_layout("one", **SETTINGS, **HELDOUT)
    alone = subprocess.run([*TRAIN, "--ml-root", str(one)], capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr[-2000:]

    port = free_port()
    first, second = _hosts(train_layout, "two", **SETTINGS, **HELDOUT)
    ranks = [_start(first, port), _start(second, port)]
    outputs = [_output(rank, 300) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]

    # The same global figures, step for step, with 2 ranks of 4 rows as with 1 rank of 8; the
    # held-out figures too, each rank measuring half the prompts.
    _assert_same_run(_metrics(first), _metrics(one))
    assert [r["step"] for r in _metrics(first) if "heldout_kl" in r] == [2, 4]
    assert "rank 1/2" in outputs[1] and "rank 0/2" in outputs[0]
    summary = json.loads((first / "output" / "data" / "training_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4

    # Rank 0 alone writes: one model/, loadable with stock PEFT; the other host's stay empty.
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_models.base_model)
    assert PeftModel.from_pretrained(base, first / "model") is not None
    for folder in ("model", "output/data", "checkpoints"):
        # Every host marks its run in checkpoints/ (`memory.running`); nothing else is written.
        assert [p.name for p in (second / folder).iterdir() if p.name != MARKER] == [], folder
    assert any((first / "output" / "tensorboard").iterdir())  # rank 0 alone writes event files
    assert not (second / "output" / "tensorboard").exists() or not any(
        (second / "output" / "tensorboard").iterdir()
    )
    # Only rank 0 prints the metric lines SageMaker's metric definitions read.
    assert outputs[0].count("step=") >= 4 and "step=" not in outputs[1]


# Rank 0's job with a save that takes 3 s longer (a bigger adapter, a slower disk).
SLOW_SAVE = """
import sys, time
from detox_entrypoints import train
save = train.TrainRecipe.save
train.TrainRecipe.save = lambda recipe, outcome: (time.sleep(3), save(recipe, outcome))
sys.exit(train.main(sys.argv[1:]))
"""


def test_the_other_hosts_end_only_once_rank_0_has_written_the_model(train_layout):
    """Under the SageMaker SDK's local mode, the first container to exit stops the others: a host
    that ended while rank 0 still saved would lose model/."""
    port = free_port()
    first, second = _hosts(train_layout, "slow-save", **dict(SETTINGS, max_ppo_steps=1))
    rank_0 = _start(first, port, command=[sys.executable, "-c", SLOW_SAVE])
    rank_1 = _start(second, port)
    output = _output(rank_1, 300)
    assert rank_1.returncode == 0, output[-2000:]
    written = (first / "model" / "adapter_info.json").is_file()  # as rank 1 ends
    output_0 = _output(rank_0, 120)
    assert rank_0.returncode == 0, output_0[-2000:]
    assert written, "rank 1 ended before rank 0 had written model/"


def test_two_ranks_stopped_by_sigterm_resume_on_one(train_layout):
    settings = dict(SETTINGS, max_ppo_steps=10, checkpoint_every=0, processes_per_host=2)
    root = train_layout("stopped", **settings)
    job = _start(root, free_port())
    metrics = root / "output" / "data" / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert job.poll() is None and time.time() < deadline, job.stdout.read()[-3000:]
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)  # to the host's job, which passes it to its two ranks
    output = _output(job, 60)  # the ranks end at once: no group teardown waits on a peer
    assert job.returncode == 143, output[-3000:]
    stopped_at = checkpoint.latest(root / "checkpoints").step
    assert 2 <= stopped_at < 10

    # The rerun has one rank; it resumes from the two ranks' checkpoint and finishes the run
    # exactly as an uninterrupted one-rank run does.
    hps = root / "input" / "config" / "hyperparameters.json"
    hps.write_text(json.dumps({**json.loads(hps.read_text()), "processes_per_host": "1"}))
    resumed = subprocess.run([*TRAIN, "--ml-root", str(root)], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from checkpoint at step {stopped_at}" in resumed.stdout
    straight = train_layout("straight", **dict(settings, processes_per_host=1))
    assert (
        subprocess.run([*TRAIN, "--ml-root", str(straight)], capture_output=True, timeout=300).returncode == 0
    )
    _assert_same_run(_metrics(root), _metrics(straight))


def test_a_host_that_never_joins_fails_the_job_in_bounded_time(train_layout):
    first, _ = _hosts(train_layout, "alone", collective_timeout=5)
    started = time.time()
    job = _start(first, free_port())
    output = _output(job, 120)
    assert job.returncode == 1, output[-2000:]
    assert time.time() - started < 60
    failure = (first / "output" / "failure").read_text()
    assert failure.startswith("RendezvousFailed: rank 0 of 2: the ranks did not all meet at 127.0.0.1:")
    assert "within 5 s" in failure and "Check that every host started" in failure
    assert not any((first / "model").iterdir())


def test_global_batch_not_divisible_by_the_ranks_is_bad_input(train_layout):
    first, _ = _hosts(train_layout, "odd", batch_size=9, mini_batch_size=3)
    result = _start(first, free_port())
    output = _output(result, 120)
    assert result.returncode == 2, output[-2000:]
    failure = (first / "output" / "failure").read_text()
    assert failure.startswith("Bad input: batch_size (9) and mini_batch_size (3) are global")
    assert "multiples of 2" in failure


def test_a_host_that_dies_mid_run_fails_the_other_in_bounded_time_with_its_step_checkpointed(train_layout):
    first, second = _hosts(train_layout, "dies", **dict(SETTINGS, max_ppo_steps=30, collective_timeout=30))
    port = free_port()
    ranks = [_start(first, port), _start(second, port)]
    metrics = first / "output" / "data" / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert ranks[0].poll() is None and time.time() < deadline, ranks[0].stdout.read()[-3000:]
        time.sleep(0.05)
    ranks[1].kill()  # the second host's instance is gone: no checkpoint, no goodbye
    killed = time.time()
    output = _output(ranks[0], 120)
    _output(ranks[1], 120)
    assert ranks[0].returncode == 1, output[-3000:]
    assert time.time() - killed < 60  # within the collective timeout (30 s), not at max_run
    failure = (first / "output" / "failure").read_text()
    assert failure.startswith("PeerLost: rank 0 of 2 lost its peers during step ")
    done = len(metrics.read_text().splitlines())
    assert checkpoint.latest(first / "checkpoints").step == done  # the last finished step is kept
    assert f"step {done} is checkpointed" in failure


# One rank of two: rank 0 leaves an all_reduce in flight that rank 1 never joins, then ends as a
# stopped job does; rank 1 holds the group open for 90 s, within the collective timeout (120 s).
_RANK_WITH_A_COLLECTIVE_IN_FLIGHT = """
import sys, time, torch, torch.distributed as dist
from detox_entrypoints.train import EXIT_PREEMPTED, end_stopped
from flan_t5_detox.contract.cluster import Rendezvous
from flan_t5_detox.ml import distributed
rank, port = int(sys.argv[1]), int(sys.argv[2])
distributed.join(Rendezvous("127.0.0.1", port, 0, 1, 2), rank, timeout=120)
if rank == 0:
    dist.all_reduce(torch.ones(4), async_op=True)
    end_stopped(EXIT_PREEMPTED)
time.sleep(90)
"""


def test_a_stopped_rank_exits_at_once_though_its_group_holds_a_collective_no_peer_joins():
    # An orderly teardown (destroy_process_group) would wait for the all_reduce until rank 1's
    # group goes, 90 s on, or the collective timeout; `end_stopped` ends the process without it.
    port = free_port()
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", _RANK_WITH_A_COLLECTIVE_IN_FLIGHT, str(rank), str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )  # fmt: skip
        for rank in range(2)
    ]
    try:
        output = ranks[0].communicate(timeout=45)[0]
        assert ranks[0].returncode == 143, output[-2000:]
        assert ranks[1].poll() is None  # the peer still holds the group: rank 0 did not wait for it
    finally:
        for rank in ranks:
            if rank.poll() is None:
                os.killpg(rank.pid, signal.SIGKILL)
            rank.communicate()
