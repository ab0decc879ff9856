"""The job image run the way SageMaker runs it, on a real Docker engine.

`docker run IMAGE train` against a bind-mounted /opt/ml holding tiny models and the sample
dataset; the evaluate job started like a processing job (ContainerEntrypoint ["evaluate", ...]);
`docker stop` (SIGTERM, 120 s grace) during training, then a resumed second run. The image and the
engine come from `.ci/docker.sh` (tests/container/engine.py).
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from detox_launcher.local_backend import IMAGE_ENV_FILE, read_env_file

from flan_t5_detox.ml import checkpoint
from tests.container.engine import DOCKER, docker_cli

pytestmark = pytest.mark.docker

LOCK = Path(__file__).resolve().parents[2] / "container" / "requirements.lock"
# The jobs must not need a model hub or any network: everything comes from the mounted folders.
OFFLINE = ["--network", "none", "-e", "HF_HUB_OFFLINE=1", "-e", "HF_DATASETS_OFFLINE=1"]


def _job(image: str, ml_root: Path, *args: str, entrypoint: str | None = None, name: str | None = None):
    """The `docker run` command line for a job with `ml_root` mounted as /opt/ml."""
    cmd = [DOCKER, "run", "--rm", *OFFLINE, "-v", f"{ml_root}:/opt/ml"]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    if name:
        cmd += ["--name", name]
    return [*cmd, image, *args]


def _run_job(image, ml_root, *args, entrypoint=None, timeout=600) -> subprocess.CompletedProcess:
    cmd = _job(image, ml_root, *args, entrypoint=entrypoint)
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


def _metrics(ml_root: Path) -> list[dict]:
    path = ml_root / "output" / "data" / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines, python_version: str = "3.11") -> dict[str, str]:
    """name -> version for the lines whose environment marker holds on the image's Python
    (3.11 for the debootstrap base CI builds on)."""
    from packaging.requirements import Requirement

    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if "==" not in line:
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"python_version": python_version}):
            pins[_canonical(req.name)] = str(req.specifier).removeprefix("==")
    return pins


def test_image_metadata_entrypoint_and_pins(image):
    config = json.loads(docker_cli("image", "inspect", image).stdout)[0]["Config"]
    # Exec form: the job (behind tini) receives SIGTERM itself; no shell in between.
    assert config["Entrypoint"] == ["/usr/local/bin/tini", "--"]
    # The jobs' environment has one owner, container/job.env, which start-job applies (see
    # test_every_job_gets_the_images_whole_environment): none of it is repeated as ENV.
    env = dict(item.split("=", 1) for item in config["Env"])
    assert not set(env) & set(read_env_file(IMAGE_ENV_FILE))
    labels = config["Labels"]
    lock = _pins(LOCK.read_text().splitlines())
    for name in ("torch", "transformers", "peft", "datasets", "evaluate", "accelerate"):
        assert labels[f"com.flan-t5-detox.{name}"] == lock[name], name
    assert labels["com.flan-t5-detox.trl"]

    # Exactly the lock is installed (plus trl and the project): nothing unpinned slipped in.
    freeze = docker_cli("run", "--rm", "--network", "none", "--entrypoint", "pip", image, "freeze", "--all")
    assert freeze.returncode == 0, freeze.stderr
    installed = _pins(freeze.stdout.splitlines())
    expected = dict(lock)
    if labels["com.flan-t5-detox.torch-variant"] == "cpu":
        expected = {k: v for k, v in expected.items() if not k.startswith("nvidia-")}
        expected["torch"] += "+cpu"
    # pip and wheel are installer tools (the nvidia-* wheels declare `wheel`), not job code.
    extra = set(installed) - set(expected) - {"trl", "flan-t5-detox", "pip", "wheel"}
    assert not extra, f"installed but not in the lock: {sorted(extra)}"
    assert {k: installed.get(k) for k in expected} == expected
    assert installed["trl"].startswith("0.4.2")

    # Lean: no pip cache, compilers or git left in the layers.
    leftovers = docker_cli(
        "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
        "ls /root/.cache/pip /var/lib/apt/lists/*_Packages* /var/cache/apt/archives/*.deb 2>/dev/null;"
        " for t in gcc cc g++ make git; do command -v $t; done; true",
    )  # fmt: skip
    assert leftovers.returncode == 0 and leftovers.stdout.strip() == "", leftovers.stdout

    # Both programs are on PATH, as SageMaker calls them.
    assert "detox-train" in docker_cli("run", "--rm", "--network", "none", image, "train", "--help").stdout
    shown = docker_cli("run", "--rm", "--network", "none", "--entrypoint", "evaluate", image, "--help")
    assert shown.returncode == 0 and "detox-evaluate" in shown.stdout


def test_every_job_gets_the_images_whole_environment(image, tmp_path):
    """`train` (behind the image's tini) and `evaluate` (a processing job's ContainerEntrypoint, so
    PID 1) start their job with every variable of container/job.env; one the job is given (-e)
    wins. Stand-ins named detox-train and detox-evaluate, first on PATH, print what they got."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for program in ("detox-train", "detox-evaluate"):
        (stubs / program).write_text("#!/bin/sh\nexec env -0\n")
        (stubs / program).chmod(0o755)
    config = json.loads(docker_cli("image", "inspect", image).stdout)[0]["Config"]
    path = dict(item.split("=", 1) for item in config["Env"])["PATH"]
    owned, given = read_env_file(IMAGE_ENV_FILE), {"TOKENIZERS_PARALLELISM": "true"}
    run = ["run", "--rm", "--network", "none", "-v", f"{stubs}:/stubs:ro", "-e", f"PATH=/stubs:{path}"]
    run += [arg for name, value in given.items() for arg in ("-e", f"{name}={value}")]
    for started in ([image, "train"], ["--entrypoint", "evaluate", image]):
        shown = docker_cli(*run, *started)
        assert shown.returncode == 0, shown.stderr
        env = dict(item.split("=", 1) for item in shown.stdout.split("\0") if item)
        assert {name: env.get(name) for name in owned} == {**owned, **given}, started


def test_train_then_evaluate_in_containers(image, train_layout, tiny_models, sample_dataset, tmp_path):
    from flan_t5_detox.contract.layout import write_processing_layout

    root = train_layout("train", max_ppo_steps=2)
    started = time.perf_counter()
    trained = _run_job(image, root, "train")  # exactly what SageMaker runs
    print(f"train job in a container: {time.perf_counter() - started:.1f}s")
    assert trained.returncode == 0, trained.stdout[-3000:]
    assert not (root / "output" / "failure").exists()
    model_dir = root / "model"
    for name in ("adapter_config.json", "adapter_model.bin", "adapter_info.json", "tokenizer.json"):
        assert (model_dir / name).is_file(), name
    assert [m["step"] for m in _metrics(root)] == [1, 2]
    summary = json.loads((root / "output" / "data" / "training_summary.json").read_text())
    assert summary["status"] == "completed" and summary["versions"]["torch"].startswith("1.13.1")

    processing = write_processing_layout(
        tmp_path / "processing",
        {
            **tiny_models.channels(sample_dataset),
            "detoxified": model_dir,
            "training_output": root / "output" / "data",
        },
    )
    # A processing job: ContainerEntrypoint ["evaluate"], ContainerArguments after the image.
    started = time.perf_counter()
    evaluated = _run_job(
        image, processing, "--num-samples", "8", "--generation-batch-size", "4", "--max-new-tokens", "16",
        "--bootstrap-samples", "200", entrypoint="evaluate",
    )  # fmt: skip
    print(f"evaluate job in a container: {time.perf_counter() - started:.1f}s")
    assert evaluated.returncode == 0, evaluated.stdout[-3000:]
    report_dir = processing / "processing" / "output" / "report"
    for name in ("report.json", "report.html", "comparisons.csv"):
        assert (report_dir / name).is_file(), name
    report = json.loads((report_dir / "report.json").read_text())
    assert "8" in json.dumps(report)  # the sample size is reported
    with open(report_dir / "comparisons.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 8  # one row per evaluated dialogue


def test_docker_stop_checkpoints_and_a_second_run_resumes(image, train_layout):
    root = train_layout(
        "preempted", max_ppo_steps=12, checkpoint_every=0, output_min_length=16, output_max_length=48
    )
    name = f"detox-sigterm-{uuid.uuid4().hex[:8]}"
    log_path = root.parent / f"{name}.log"  # a file, not a pipe nobody reads while we wait
    with open(log_path, "w") as log:
        job = subprocess.Popen(_job(image, root, "train", name=name), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while len(_metrics(root)) < 2:
            assert job.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, "training did not reach step 2 in 300 s"
            time.sleep(0.2)
        sent = time.time()
        stopped = docker_cli("stop", "-t", "120", name, timeout=180)  # SageMaker's grace period
        waited = time.time() - sent
        job.wait(timeout=60)
    finally:
        docker_cli("rm", "-f", name)
        if job.poll() is None:
            job.kill()
    assert stopped.returncode == 0, stopped.stderr
    assert waited < 60, f"the job took {waited:.0f}s to stop"  # exited on SIGTERM, not SIGKILL at 120 s
    output = log_path.read_text()
    assert job.returncode == 143, output[-3000:]
    latest = checkpoint.latest(root / "checkpoints")
    assert latest is not None, output[-3000:]
    assert 2 <= latest.step < 12  # written by the SIGTERM path (checkpoint_every=0)
    assert not any((root / "model").iterdir())  # no half-written model

    resumed = _run_job(image, root, "train")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert f"resumed from checkpoint at step {latest.step}" in resumed.stdout
    assert [m["step"] for m in _metrics(root)] == list(range(1, 13))
    assert (root / "model" / "adapter_model.bin").is_file()
