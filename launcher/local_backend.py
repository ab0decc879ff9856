"""Local backend: the same jobs on this machine, under Docker or as plain processes.

The work folder is laid out like /opt/ml and its config files are written the way SageMaker
writes them. S3 inputs are downloaded into it; local inputs are bind-mounted read-only under
Docker and symlinked for plain processes (no copies of multi-GB models).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from flan_t5_detox import s3

from .jobs import CHECKPOINT_DIR, PROCESSING_INPUT, PROCESSING_OUTPUT, REPORT, EvalJob, TrainJob

ML = "/opt/ml"
HOST = "algo-1"


@dataclass
class LocalRun:
    kind: str  # "train" | "evaluate"
    name: str
    root: Path  # stands in for /opt/ml
    arguments: list[str]  # what follows the image (train) or the entrypoint (evaluate)
    entrypoint: list[str] | None = None  # None: the image's ENTRYPOINT (SageMaker training)
    mounts: dict[str, Path] = field(default_factory=dict)  # container path -> local path
    checkpoint_s3_uri: str = ""

    def host_path(self, container_path: str) -> Path:
        return self.root / Path(container_path).relative_to(ML)

    @property
    def failure(self) -> str:
        """What SageMaker would show as FailureReason (first 1024 characters)."""
        for name in ("failure", "message"):
            path = self.root / "output" / name
            if path.is_file() and path.read_text().strip():
                return path.read_text()[:1024].strip()
        return ""

    @property
    def outputs(self) -> dict[str, Path]:
        if self.kind == "train":
            return {"model": self.root / "model", "output": self.root / "output" / "data"}
        return {REPORT: self.host_path(f"{PROCESSING_OUTPUT}/{REPORT}")}


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4))


def _place(run: LocalRun, source: str, container_dir: str, s3_client) -> None:
    """An input appears as a folder, as SageMaker makes it: S3 downloaded, local mounted."""
    target = run.host_path(container_dir)
    if source.startswith("s3://"):
        s3.download(source, target, s3_client)
        return
    path = Path(source).resolve()
    if path.is_dir():
        run.mounts[container_dir] = path
    else:  # a single file lands inside the folder, like an S3 object input
        target.mkdir(parents=True, exist_ok=True)
        run.mounts[f"{container_dir}/{path.name}"] = path


def _resource_config(instance_type: str) -> dict:
    return {
        "current_host": HOST,
        "current_instance_type": instance_type,
        "current_group_name": "homogeneousCluster",
        "hosts": [HOST],
        "instance_groups": [
            {"instance_group_name": "homogeneousCluster", "instance_type": instance_type, "hosts": [HOST]}
        ],
        "network_interface_name": "eth0",
    }


def prepare_training(job: TrainJob, root: Path, s3_client=None) -> LocalRun:
    run = LocalRun(
        "train", job.name, Path(root).resolve(), ["train"], checkpoint_s3_uri=job.checkpoint_s3_uri
    )
    config = run.root / "input" / "config"
    _write_json(config / "hyperparameters.json", job.hyperparameters)
    _write_json(
        config / "inputdataconfig.json",
        {
            name: {
                "TrainingInputMode": "File",
                "S3DistributionType": "FullyReplicated",
                "RecordWrapperType": "None",
            }
            for name in job.channels
        },
    )
    _write_json(config / "resourceconfig.json", _resource_config(job.resources.instance_type))
    checkpoint = {"LocalPath": CHECKPOINT_DIR}
    if job.checkpoint_s3_uri:
        checkpoint["S3Uri"] = job.checkpoint_s3_uri
    _write_json(config / "checkpointconfig.json", checkpoint)
    for name, source in job.channels.items():
        _place(run, source, f"{ML}/input/data/{name}", s3_client)
    for sub in ("model", "output/data", "checkpoints"):
        (run.root / sub).mkdir(parents=True, exist_ok=True)
    if job.checkpoint_s3_uri and s3.list_objects(job.checkpoint_s3_uri, s3_client):
        s3.download(job.checkpoint_s3_uri, run.root / "checkpoints", s3_client)  # resume, as SageMaker does
    return run


def prepare_processing(job: EvalJob, root: Path, s3_client=None) -> LocalRun:
    run = LocalRun("evaluate", job.name, Path(root).resolve(), list(job.arguments), entrypoint=job.entrypoint)
    inputs = []
    for name, source in job.inputs.items():
        destination = f"{PROCESSING_INPUT}/{name}"
        _place(run, source, destination, s3_client)
        s3_uri = source if source.startswith("s3://") else Path(source).resolve().as_uri()
        inputs.append(
            {
                "InputName": name,
                "AppManaged": False,
                "S3Input": {
                    "S3Uri": s3_uri,
                    "LocalPath": destination,
                    "S3DataType": "S3Prefix",
                    "S3InputMode": "File",
                    "S3DataDistributionType": "FullyReplicated",
                    "S3CompressionType": "None",
                },
            }
        )
    report = f"{PROCESSING_OUTPUT}/{REPORT}"
    run.host_path(report).mkdir(parents=True, exist_ok=True)
    request = {  # SageMaker writes the CreateProcessingJob request here
        "ProcessingJobName": job.name,
        "ProcessingInputs": inputs,
        "ProcessingOutputConfig": {
            "Outputs": [
                {
                    "OutputName": REPORT,
                    "AppManaged": False,
                    "S3Output": {"S3Uri": job.report_uri, "LocalPath": report, "S3UploadMode": "EndOfJob"},
                }
            ]
        },
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": job.resources.instance_count,
                "InstanceType": job.resources.instance_type,
                "VolumeSizeInGB": job.resources.volume_size,
            }
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": job.resources.max_run},
        "AppSpecification": {
            "ImageUri": job.image,
            "ContainerEntrypoint": job.entrypoint,
            "ContainerArguments": job.arguments,
        },
        "Environment": job.environment,
        "RoleArn": job.role,
    }
    _write_json(run.root / "config" / "processingjobconfig.json", request)
    _write_json(run.root / "config" / "resourceconfig.json", {"current_host": HOST, "hosts": [HOST]})
    (run.root / "output").mkdir(parents=True, exist_ok=True)
    return run


def docker_command(
    run: LocalRun, image: str, environment: dict[str, str], network: str | None, docker: str = "docker"
) -> list[str]:
    cmd = [docker, "run", "--rm", "--name", run.name, "-v", f"{run.root}:{ML}"]
    for target, source in sorted(run.mounts.items()):
        cmd += ["-v", f"{source}:{target}:ro"]
    if network:
        cmd += ["--network", network]
    for key, value in environment.items():
        cmd += ["-e", f"{key}={value}"]
    if run.entrypoint:  # ContainerEntrypoint replaces the image's ENTRYPOINT, as in SageMaker
        cmd += ["--entrypoint", run.entrypoint[0]]
        return [*cmd, image, *run.entrypoint[1:], *run.arguments]
    return [*cmd, image, *run.arguments]


def process_command(run: LocalRun) -> list[str]:
    """The job as a plain process: `detox-train|detox-evaluate --ml-root ROOT [args]`."""
    arguments = [] if run.kind == "train" else run.arguments
    return [sys.executable, "-m", f"detox_entrypoints.{run.kind}", "--ml-root", str(run.root), *arguments]


def link_mounts(run: LocalRun) -> None:
    """Without Docker, each mount becomes a symlink at its place in the work folder."""
    for target, source in run.mounts.items():
        link = run.host_path(target)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            link.rmdir()  # an empty mount point left by an earlier docker run
        link.symlink_to(source, target_is_directory=source.is_dir())


def execute(
    run: LocalRun,
    use_docker: bool,
    image: str = "",
    environment: dict[str, str] | None = None,
    network: str | None = None,
    s3_client=None,
) -> int:
    """Run the job to its end and return its exit code (0 = Completed, as in SageMaker)."""
    environment = dict(environment or {})
    if use_docker:
        cmd = docker_command(run, image, environment, network)
        env = None
    else:
        link_mounts(run)
        cmd = process_command(run)
        env = {**os.environ, **environment}
    process = subprocess.Popen(cmd, env=env)
    try:
        code = process.wait()
    except KeyboardInterrupt:  # stop like SageMaker does: SIGTERM, the job checkpoints and exits
        if use_docker:
            subprocess.run(["docker", "stop", "-t", "120", run.name], capture_output=True)
        else:
            process.terminate()
        code = process.wait()
        raise
    finally:
        if run.checkpoint_s3_uri and any((run.root / "checkpoints").iterdir()):
            s3.upload(run.root / "checkpoints", run.checkpoint_s3_uri, s3_client)
    return code
