"""Faults of the machine, on the real jobs as processes: a volume that fills up (a real tmpfs of a
few hundred kB mounted under the job's own folders: CI runs as root and mounts it, elsewhere these
tests are skipped without root), too little memory for the settings, and a run killed anyway.

A full disk fails the job with exit 2 (a `JobInputError`: the fix is the user's) and one line in
output/failure naming what was written, where, the free space and the fix; staging is gone, the
last complete checkpoint is intact, and a rerun with room resumes or completes."""

import os
import signal
import subprocess
import sys
import time

import pytest

from flan_t5_detox.contract.layout import write_processing_layout, write_training_layout
from flan_t5_detox.contract.memory import LIMIT_ENV, MARKER
from flan_t5_detox.ml import checkpoint
from tests.filesystems import resize, size_limited

TRAIN = [sys.executable, "-m", "detox_entrypoints.train"]
EVALUATE = [sys.executable, "-m", "detox_entrypoints.evaluate", "evaluate"]
SMALL = {
    "batch_size": 8, "mini_batch_size": 4, "output_min_length": 8, "output_max_length": 24,
    "dtype": "float32", "num_threads": 1,
}  # fmt: skip
EVAL_SETTINGS = ["--num-samples", "12", "--max-new-tokens", "16", "--generation-batch-size", "6"]
EVAL_SETTINGS += ["--bootstrap-samples", "200", "--dtype", "float32", "--num-threads", "1"]


def _run(command, root, env=None, timeout=300):
    return subprocess.run(
        [*command, "--ml-root", str(root)], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def _clear_failure(result, root, *phrases, prefix="Disk full: ") -> str:
    """The failure of a job refused for its machine: exit 2, one line naming what it must."""
    assert result.returncode == 2, result.stderr[-3000:]
    failure = (root / "output" / "failure").read_text()
    for phrase in phrases:
        assert phrase in failure, (phrase, failure)
    for raw in ("Traceback", "OSError", "Errno", "RuntimeError"):
        assert raw not in failure, failure
    assert failure.startswith(prefix) and failure.count("\n") == 1
    return failure


@pytest.fixture
def train_root(tmp_path, tiny_models, sample_dataset):
    def make(**settings):
        channels = tiny_models.channels(sample_dataset)
        return write_training_layout(tmp_path / "ml", channels, {**SMALL, **settings}, how="link")

    return make


def test_a_full_disk_at_a_checkpoint_fails_clearly_and_a_rerun_resumes(train_root):
    """checkpoints/ on a tmpfs with room for about 1.5 checkpoints (one is about 210 kB here)."""
    root = train_root(max_ppo_steps=4, checkpoint_every=1, preflight="warn")
    folder = root / "checkpoints"
    with size_limited(folder, "320k"):
        result = _run(TRAIN, root)
        failure = _clear_failure(
            result, root, "cannot write the checkpoint of step 2", str(folder), "free there", "--volume-size"
        )
        assert "resumes from it" in failure
        assert "preflight=warn: running anyway" in result.stdout  # the preflight saw it coming
        assert not list(folder.glob(".tmp-*"))  # the staging folder is gone
        assert checkpoint.latest(folder).step == 1  # the last complete checkpoint is intact
        assert not (root / "model" / "adapter_model.bin").exists()

        resize(folder, "4m")  # the volume made larger
        rerun = _run(TRAIN, root)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert "resumed from checkpoint at step 1" in rerun.stdout + rerun.stderr
        assert checkpoint.latest(folder).step == 4
    steps = (root / "output" / "data" / "metrics.jsonl").read_text().splitlines()
    assert len(steps) == 4 and (root / "model" / "adapter_model.bin").is_file()


def test_a_full_disk_while_publishing_the_model_leaves_no_half_model_and_a_rerun_completes(train_root):
    """model/ on a tmpfs smaller than the model (about 1 MB here, mostly the tokenizer)."""
    root = train_root(max_ppo_steps=2, preflight="warn")
    model = root / "model"
    with size_limited(model, "256k"):
        result = _run(TRAIN, root)
        _clear_failure(result, root, "cannot write the trained model", str(model), "free there")
        assert list(model.iterdir()) == []  # no staging, no half of a model
        assert checkpoint.latest(root / "checkpoints").step == 2  # the training is kept

        resize(model, "4m")
        rerun = _run(TRAIN, root)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert "resumed from checkpoint at step 2" in rerun.stdout + rerun.stderr
        assert "[metrics]" not in rerun.stdout  # nothing trained again
        assert {"adapter_model.bin", "adapter_config.json", "tokenizer.json"} <= {
            p.name for p in model.iterdir()
        }
        assert not list(model.glob(".staging-*"))


def test_the_disk_preflight_refuses_a_run_its_volume_cannot_hold_before_any_model_loads(train_root):
    root = train_root(max_ppo_steps=50, save_adapter_every=1)
    with size_limited(root / "checkpoints", "320k"):
        started = time.perf_counter()
        result = _run(TRAIN, root)
        failure = _clear_failure(result, root, "the run will write about", "50 kept adapter(s)", "free")
        assert "[metrics]" not in result.stdout and not (root / "checkpoints" / "step-000001").exists()
    print(f"refused after {time.perf_counter() - started:.1f} s: {failure}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_models, sample_dataset):
    root = write_training_layout(
        tmp_path_factory.mktemp("train") / "ml", tiny_models.channels(sample_dataset),
        {**SMALL, "max_ppo_steps": 2}, how="link",
    )  # fmt: skip
    result = _run(TRAIN, root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_a_full_disk_while_writing_the_report_fails_clearly_and_a_rerun_completes(
    tmp_path, tiny_models, sample_dataset, trained
):
    """processing/output/report on a tmpfs of 64 kB: the report's plots alone are larger."""
    inputs = {**tiny_models.channels(sample_dataset), "detoxified": trained / "model"}
    root = write_processing_layout(tmp_path / "ml", inputs, how="link")
    report = root / "processing" / "output" / "report"
    with size_limited(report, "64k"):
        refused = _run([*EVALUATE, *EVAL_SETTINGS], root)  # the preflight: before any model loads
        _clear_failure(refused, root, "the run will write about", str(report), "--volume-size")

        result = _run([*EVALUATE, *EVAL_SETTINGS, "--preflight", "warn"], root)
        _clear_failure(result, root, "cannot write the report", str(report), "free there", "--volume-size")
        assert (root / "output" / "message").read_text() == (root / "output" / "failure").read_text()
        assert list(report.iterdir()) == []  # no staging, no half of a report

        resize(report, "16m")
        rerun = _run([*EVALUATE, *EVAL_SETTINGS], root)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert (report / "report.json").is_file() and not list(report.glob(".report-staging-*"))


def test_the_memory_preflight_refuses_settings_that_cannot_fit_the_limit(train_root, tmp_path):
    """A limit of 400 MB set in the job's environment (as a job's Environment sets it): the tiny
    default's train job needs about 580 MB (bench/RESULTS.md), so it is refused before any model
    loads, with the figures and what to lower; at 4000 MB the same settings run."""
    root = train_root(max_ppo_steps=1)
    started = time.perf_counter()
    result = _run(TRAIN, root, env={LIMIT_ENV: "400"})
    failure = _clear_failure(
        result, root, "will not fit in memory", "the job may use 400.0 MB", LIMIT_ENV, "lower batch_size",
        "mini_batch_size", "output_max_length", prefix="Not enough memory: ",
    )  # fmt: skip
    assert "estimated" in failure and "[metrics]" not in result.stdout
    print(f"refused after {time.perf_counter() - started:.1f} s: {failure}")

    close = _run(TRAIN, root, env={LIMIT_ENV: "700"})  # fits, within the estimate's error
    assert close.returncode == 0, close.stderr[-3000:]
    assert "memory: close to the limit" in close.stdout


def test_the_evaluate_job_memory_preflight_refuses_too(tmp_path, tiny_models, sample_dataset, trained):
    inputs = {**tiny_models.channels(sample_dataset), "detoxified": trained / "model"}
    root = write_processing_layout(tmp_path / "ml", inputs, how="link")
    result = _run([*EVALUATE, *EVAL_SETTINGS], root, env={LIMIT_ENV: "300"})
    _clear_failure(
        result, root, "will not fit in memory", "lower generation_batch_size", "max_new_tokens",
        prefix="Not enough memory: ",
    )  # fmt: skip
    assert not list((root / "processing" / "output" / "report").iterdir())


def test_a_run_killed_outright_is_named_by_the_next_start_which_resumes(train_root):
    """SIGKILL, as the kernel's OOM killer sends it, leaves the running marker behind."""
    root = train_root(max_ppo_steps=6, checkpoint_every=1)
    metrics = root / "output" / "data" / "metrics.jsonl"
    job = subprocess.Popen(
        [*TRAIN, "--ml-root", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert job.poll() is None and time.time() < deadline
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=60)
    assert (root / "checkpoints" / MARKER).is_file()
    assert not (root / "output" / "failure").exists()  # a SIGKILL writes nothing

    rerun = _run(TRAIN, root)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = rerun.stdout + rerun.stderr
    assert "the last run" in log and "most likely killed for memory" in log
    assert "batch_size=8" in log and "mini_batch_size=4" in log  # its settings
    assert "resumed from checkpoint at step" in log  # the resume is unaffected
    again = _run(TRAIN, root)  # a run that ended normally leaves no such warning
    assert again.returncode == 0 and "most likely killed" not in again.stdout + again.stderr
