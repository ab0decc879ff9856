"""The job image run the way SageMaker runs it, on a real Docker engine.

`docker run IMAGE train` against a bind-mounted /opt/ml holding tiny models and the sample
dataset; the evaluate job started like a processing job (ContainerEntrypoint ["evaluate", ...]);
`docker stop` (SIGTERM, 120 s grace) during training, then a resumed second run. The image and the
engine come from `.ci/docker.sh`; in CI (CI=true) their absence is a failure, elsewhere a skip.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from bench import allocator
from flan_t5_detox.ml import checkpoint

pytestmark = pytest.mark.docker

DOCKER = os.environ.get("DOCKER", "docker")
IMAGE = os.environ.get("DETOX_IMAGE", "flan-t5-detox:ci")
LOCK = Path(__file__).resolve().parents[2] / "container" / "requirements.lock"
# The jobs must not need a model hub or any network: everything comes from the mounted folders.
OFFLINE = ["--network", "none", "-e", "HF_HUB_OFFLINE=1", "-e", "HF_DATASETS_OFFLINE=1"]


@pytest.fixture(scope="module")
def image() -> str:
    problem = None
    if shutil.which(DOCKER) is None:
        problem = f"no docker CLI ({DOCKER})"
    else:
        found = subprocess.run([DOCKER, "image", "inspect", IMAGE], capture_output=True, text=True)
        if found.returncode != 0:
            problem = f"image {IMAGE} unavailable: {(found.stderr or found.stdout).strip()[:300]}"
    if problem:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{problem}; CI must build and test the image (.ci/docker.sh)")
        pytest.skip(f"{problem}; build it with .ci/docker.sh start")
    return IMAGE


def _docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)


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
    config = json.loads(_docker("image", "inspect", image).stdout)[0]["Config"]
    # Exec form: the job (behind tini) receives SIGTERM itself; no shell in between.
    assert config["Entrypoint"] == ["/usr/local/bin/tini", "--"]
    # The allocator settings bench/allocator.py measured are the ones the jobs run with.
    env = dict(item.split("=", 1) for item in config["Env"])
    assert {k: env.get(k) for k in allocator.TUNED} == allocator.TUNED
    labels = config["Labels"]
    lock = _pins(LOCK.read_text().splitlines())
    for name in ("torch", "transformers", "peft", "datasets", "evaluate", "accelerate"):
        assert labels[f"com.flan-t5-detox.{name}"] == lock[name], name
    assert labels["com.flan-t5-detox.trl"]

    # Exactly the lock is installed (plus trl and the project): nothing unpinned slipped in.
    freeze = _docker("run", "--rm", "--network", "none", "--entrypoint", "pip", image, "freeze", "--all")
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
    leftovers = _docker(
        "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
        "ls /root/.cache/pip /var/lib/apt/lists/*_Packages* /var/cache/apt/archives/*.deb 2>/dev/null;"
        " for t in gcc cc g++ make git; do command -v $t; done; true",
    )  # fmt: skip
    assert leftovers.returncode == 0 and leftovers.stdout.strip() == "", leftovers.stdout

    # Both programs are on PATH, as SageMaker calls them.
    assert "detox-train" in _docker("run", "--rm", "--network", "none", image, "train", "--help").stdout
    shown = _docker("run", "--rm", "--network", "none", "--entrypoint", "evaluate", image, "--help")
    assert shown.returncode == 0 and "detox-evaluate" in shown.stdout


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
            "base_model": tiny_models.base_model,
            "peft_checkpoint": tiny_models.peft_checkpoint,
            "detoxified": model_dir,
            "dataset": sample_dataset,
            "reward_model": tiny_models.reward_model,
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
        stopped = _docker("stop", "-t", "120", name, timeout=180)  # SageMaker's grace period
        waited = time.time() - sent
        job.wait(timeout=60)
    finally:
        _docker("rm", "-f", name)
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


def _engine_has_own_network() -> bool:
    """Whether dockerd runs in a network namespace other than ours (.ci/docker.sh isolates it)."""
    try:
        pid = Path("/var/run/docker.pid").read_text().strip()
        return os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    except OSError:
        return False


def _sdk_local_session(tmp_path, s3_url: str | None = None):
    """The real SDK's LocalSession (docker compose); S3 is the test's own server when given."""
    import boto3
    from sagemaker.local import LocalSession

    # The SDK's compose file always adds a bridge network ("sagemaker-local"); this machine's
    # bridges are off limits, so the engine must have a network namespace of its own.
    if not _engine_has_own_network():
        problem = "dockerd shares this host's network (compose would add a bridge here)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{problem}; .ci/docker.sh start runs it in its own network namespace")
        pytest.skip(f"{problem}; start it with .ci/docker.sh start")
    assert shutil.which("docker-compose") or _docker("compose", "version").returncode == 0
    if s3_url:
        from tests.servers import ACCESS_KEY, REGION, SECRET_KEY

        boto_session = boto3.Session(
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
        )
    else:  # fake static credentials: no metadata-service lookups; they only reach the container's env
        boto_session = boto3.Session(
            aws_access_key_id="local", aws_secret_access_key="local", region_name="us-east-1"
        )
    telemetry_off = {
        "SchemaVersion": "1.0",
        "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}},
    }
    session = LocalSession(boto_session=boto_session, s3_endpoint_url=s3_url, sagemaker_config=telemetry_off)
    session.config = {"local": {"local_code": True, "container_root": str(tmp_path)}}
    return session


@contextlib.contextmanager
def _compose_cleaned():
    """compose leaves its containers and network behind; the network is in the engine's namespace."""
    before = set(_docker("ps", "-aq").stdout.split())
    try:
        yield
    finally:
        made = set(_docker("ps", "-aq", "--filter", "label=com.docker.compose.project").stdout.split())
        if made - before:
            _docker("rm", "-f", *sorted(made - before))
        _docker("network", "rm", "sagemaker-local")


def test_sagemaker_sdk_local_mode_trains_on_two_containers(image, tiny_models, sample_dataset, tmp_path):
    """The real SDK (`instance_type="local"`, docker compose) as an outside check of the contract,
    with `instance_count=2`: two containers on the SDK's compose network, whose resource configs
    name both hosts, train data-parallel (rank 0 on the first host writes model/ and output/)."""
    from sagemaker.estimator import Estimator

    session = _sdk_local_session(tmp_path)
    dataset_dir = tmp_path / "dataset"
    dataset_dir.mkdir()
    shutil.copy(sample_dataset, dataset_dir)
    estimator = Estimator(
        image_uri=image,
        role="arn:aws:iam::111111111111:role/detox-local",
        instance_count=2,
        instance_type="local",
        output_path=f"file://{tmp_path / 'artifacts'}",
        hyperparameters={
            "max_ppo_steps": 1,
            "batch_size": 8,
            "mini_batch_size": 4,
            "output_min_length": 8,
            "output_max_length": 16,
            "dtype": "float32",
            "num_threads": 1,
            "collective_timeout": 120,
        },
        environment={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        sagemaker_session=session,
    )
    channels = {
        "base_model": tiny_models.base_model,
        "peft_checkpoint": tiny_models.peft_checkpoint,
        "reward_model": tiny_models.reward_model,
        "dataset": dataset_dir,
    }
    with _compose_cleaned():
        estimator.fit({name: f"file://{path}" for name, path in channels.items()}, wait=True)

    model_tar = Path(estimator.model_data.removeprefix("file://"))
    with tarfile.open(model_tar) as archive:
        names = set(archive.getnames())
    assert {"adapter_config.json", "adapter_model.bin", "adapter_info.json"} <= names, names
    with tarfile.open(model_tar.parent / "output.tar.gz") as archive:
        metrics = archive.extractfile("data/metrics.jsonl").read().decode().splitlines()
        summary = json.loads(archive.extractfile("data/training_summary.json").read())
    assert [json.loads(x)["step"] for x in metrics] == [1]
    assert summary["world_size"] == 2  # both containers' ranks trained the one model


def test_sagemaker_sdk_local_mode_shards_the_evaluation_on_two_containers_then_merges(
    image, train_layout, tiny_models, sample_dataset, s3_server, tmp_path
):
    """The SDK's local processing with `instance_count=2` (inputs and outputs through the test's
    S3 server): each container writes its own part, and a one-container merge job builds the
    report from both."""
    from detox_entrypoints import train
    from sagemaker.processing import ProcessingInput, ProcessingOutput, Processor

    from flan_t5_detox.contract import s3
    from tests.servers import s3_test_client

    trained = train_layout("train", max_ppo_steps=1)
    assert train.main(["--ml-root", str(trained)]) == 0
    client = s3_test_client(s3_server.url)
    bucket = f"detox-sdk-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    sources = {
        "base_model": tiny_models.base_model,
        "peft_checkpoint": tiny_models.peft_checkpoint,
        "reward_model": tiny_models.reward_model,
        "dataset": Path(sample_dataset),
        "detoxified": trained / "model",
    }
    for name, source in sources.items():
        s3.upload(source, f"s3://{bucket}/inputs/{name}" + ("/" if source.is_file() else ""), client)
    session = _sdk_local_session(tmp_path, s3_server.url)

    def processor(count: int) -> Processor:
        return Processor(
            role="arn:aws:iam::111111111111:role/detox-local",
            image_uri=image,
            instance_count=count,
            instance_type="local",
            entrypoint=["evaluate"],
            env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
            sagemaker_session=session,
        )

    def output(prefix: str) -> list:
        return [
            ProcessingOutput(
                source="/opt/ml/processing/output/report",
                destination=f"s3://{bucket}/{prefix}",
                output_name="report",
            )
        ]

    inputs = [
        ProcessingInput(
            source=f"s3://{bucket}/inputs/{name}",
            destination=f"/opt/ml/processing/input/{name}",
            input_name=name,
        )
        for name in sources
    ]
    settings = ["--num-samples", "8", "--generation-batch-size", "4", "--max-new-tokens", "12"]
    settings += ["--bootstrap-samples", "200", "--num-threads", "1"]
    with _compose_cleaned():
        processor(2).run(inputs=inputs, outputs=output("sharded"), arguments=settings, wait=True, logs=False)
    parts = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="sharded/")["Contents"])
    assert len(parts) == 2 and all(re.fullmatch(r"sharded/part-algo-[12]-\w+\.json", p) for p in parts), parts

    merge_input = ProcessingInput(
        source=f"s3://{bucket}/sharded", destination="/opt/ml/processing/input/parts", input_name="parts"
    )
    with _compose_cleaned():
        processor(1).run(
            inputs=[merge_input], outputs=output("merged"), arguments=["merge"], wait=True, logs=False
        )
    report = json.loads(client.get_object(Bucket=bucket, Key="merged/report.json")["Body"].read())
    assert report["sample_size"] == 8
    rows = client.get_object(Bucket=bucket, Key="merged/comparisons.csv")["Body"].read().decode()
    assert len(list(csv.DictReader(rows.splitlines()))) == 8  # every dialogue, from both hosts' parts
