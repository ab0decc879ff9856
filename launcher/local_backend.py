"""Local backend: the same jobs on this machine, under Docker or as plain processes.

The work folder is laid out like /opt/ml by the contract's one layout writer. S3 inputs are
downloaded into it; local inputs are bind-mounted read-only under Docker and symlinked for
plain processes (no copies of multi-GB models). A plain process gets the environment a
container would: the image's whole environment (container/job.env), the job's own variables and
the basics a process needs, never the laptop's whole environment (a stray DETOX_* variable must
not change a local run but not a cloud one).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from flan_t5_detox.contract import cluster, layout, s3
from flan_t5_detox.contract.hosts import host_names
from flan_t5_detox.contract.memory import killed_message, killed_run
from flan_t5_detox.contract.paths import ML_ROOT, REPORT_OUTPUT, MlPaths

from .errors import LaunchError
from .jobs import EvalJob, TrainJob

# What a plain process keeps of the launcher's environment: what any process needs to run
# (PATH, HOME, locale, temporary folder), the model hub's offline switches and cache, and AWS
# access (a container on SageMaker has its role's credentials).
PASSED_THROUGH = ("PATH", "HOME", "USER", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "VIRTUAL_ENV")
PASSED_THROUGH_PREFIXES = ("AWS_", "HF_", "TRANSFORMERS_")
# The job image's environment, its one owner: the Dockerfile copies this file into the image,
# whose start-job applies it. It lives beside the Dockerfile, in the source checkout.
IMAGE_ENV_FILE = Path(__file__).resolve().parent.parent / "container" / "job.env"
# A line sh's `read -r` and `export` take exactly as written: no quotes, spaces or expansions.
_ENV_LINE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=([A-Za-z0-9_.,:/+@%-]*)")


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of a job.env file: KEY=value lines, `#` comment lines and empty lines."""
    variables = {}
    # Lines as sh reads them: split at \n only (read_text would turn a \r into a line end).
    for number, line in enumerate(path.read_bytes().decode().split("\n"), 1):
        if line == "" or line.startswith("#"):
            continue
        match = _ENV_LINE.fullmatch(line)
        if not match:
            raise ValueError(f"{path}:{number}: not a KEY=value line that sh reads as written: {line!r}")
        variables[match[1]] = match[2]
    return variables


def image_environment() -> dict[str, str]:
    """What the job image gives every job process (container/job.env)."""
    if not IMAGE_ENV_FILE.is_file():
        raise LaunchError(
            f"the job image's environment ({IMAGE_ENV_FILE}) is missing: plain-process runs read it "
            "from the project's source checkout (pip install -e .)"
        )
    return read_env_file(IMAGE_ENV_FILE)


@dataclass
class LocalRun:
    kind: str  # "train" | "evaluate"
    name: str
    paths: MlPaths  # the work folder standing in for /opt/ml
    arguments: list[str]  # what follows the image (train) or the entrypoint (evaluate)
    entrypoint: list[str] | None = None  # None: the image's ENTRYPOINT (SageMaker training)
    mounts: dict[str, Path] = field(default_factory=dict)  # container path -> local path
    checkpoint_s3_uri: str = ""

    @property
    def root(self) -> Path:
        return self.paths.root

    @property
    def failure(self) -> str:
        """What SageMaker would show as FailureReason (first 1024 characters); for a job killed
        outright, which writes none, what its running marker says (most likely out of memory)."""
        for path in (self.paths.failure, self.paths.message):
            if path.is_file() and path.read_text().strip():
                return path.read_text()[:1024].strip()
        for folder in (self.paths.checkpoints, self.paths.failure.parent):
            killed = killed_run(folder)
            if killed is not None:
                return killed_message(killed)
        return ""

    @property
    def outputs(self) -> dict[str, Path]:
        if self.kind == "train":
            return {"model": self.paths.model_dir, "output": self.paths.output_data_dir}
        return {REPORT_OUTPUT: self.paths.processing_output(REPORT_OUTPUT)}


def _place(run: LocalRun, source: str, target: Path, s3_client) -> None:
    """An input appears as a folder, as SageMaker makes it: S3 downloaded, local mounted."""
    if source.startswith("s3://"):
        s3.download(source, target, s3_client)
        return
    path = Path(source).resolve()
    container = run.paths.container_path(target)
    if path.is_dir():
        run.mounts[container] = path
    else:  # a single file lands inside the folder, like an S3 object input
        target.mkdir(parents=True, exist_ok=True)
        run.mounts[f"{container}/{path.name}"] = path


def prepare_training(job: TrainJob, root: Path, s3_client=None, host: str = layout.HOST) -> LocalRun:
    """The layout of one host of `job` (`host` of `job.resources.instance_count`)."""
    paths = MlPaths(Path(root).resolve())
    run = LocalRun("train", job.name, paths, ["train"], checkpoint_s3_uri=job.checkpoint_s3_uri)
    hosts = host_names(job.resources.instance_count)
    layout.write_training_config(
        paths,
        job.hyperparameters,
        job.channels,
        job.resources.instance_type,
        job.checkpoint_s3_uri,
        hosts,
        host,
    )
    for name, source in job.channels.items():
        _place(run, source, paths.channel(name), s3_client)
    if job.checkpoint_s3_uri and s3.list_objects(job.checkpoint_s3_uri, s3_client):
        s3.download(job.checkpoint_s3_uri, paths.checkpoints, s3_client)  # resume, as SageMaker does
    return run


def prepare_processing(job: EvalJob, root: Path, s3_client=None, host: str = layout.HOST) -> LocalRun:
    """The layout of one host of `job` (`host` of `job.resources.instance_count`)."""
    paths = MlPaths(Path(root).resolve())
    run = LocalRun("evaluate", job.name, paths, list(job.arguments), entrypoint=job.entrypoint)
    for name, source in job.inputs.items():
        _place(run, source, paths.processing_input(name), s3_client)
    layout.write_processing_config(
        paths,
        job.name,
        {n: s if s.startswith("s3://") else Path(s).resolve().as_uri() for n, s in job.inputs.items()},
        {REPORT_OUTPUT: job.report_uri},
        instance_type=job.resources.instance_type,
        instance_count=job.resources.instance_count,
        volume_size=job.resources.volume_size,
        max_run=job.resources.max_run,
        image=job.image,
        entrypoint=job.entrypoint,
        arguments=job.arguments,
        environment=job.environment,
        role=job.role,
        current_host=host,
    )
    return run


def docker_command(
    run: LocalRun, image: str, environment: dict[str, str], network: str | None, docker: str = "docker"
) -> list[str]:
    cmd = [docker, "run", "--rm", "--name", run.name, "-v", f"{run.root}:{ML_ROOT}"]
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


def process_environment(
    environment: dict[str, str], launcher: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of a plain-process job: as in a container, the image's variables and the
    job's own (which win), plus only what `PASSED_THROUGH` keeps of the launcher's."""
    launcher = dict(os.environ if launcher is None else launcher)
    kept = {k: v for k, v in launcher.items() if k in PASSED_THROUGH or k.startswith(PASSED_THROUGH_PREFIXES)}
    return {**kept, **image_environment(), **environment}


def link_mounts(run: LocalRun) -> None:
    """Without Docker, each mount becomes a symlink at its place in the work folder."""
    for target, source in run.mounts.items():
        link = run.paths.local_path(target)
        if link.is_dir() and not link.is_symlink() and not any(link.iterdir()):
            link.rmdir()  # an empty mount point left by an earlier docker run
        layout.place(source, link if source.is_dir() else link.parent, "link")


def execute_hosts(runs: list[LocalRun], environment: dict[str, str], s3_client=None) -> int:
    """The hosts of one multi-instance training job as plain processes here, all at once: their
    host names do not resolve, so they meet at rank 0's rendezvous on loopback. Returns the
    first failing host's exit code, else 0. Rank 0 (the first run) holds the checkpoints."""
    port = cluster.free_port()
    processes = []
    for run in runs:
        link_mounts(run)
        env = process_environment({**environment, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        processes.append(subprocess.Popen(process_command(run), env=env))
    try:
        codes = [process.wait() for process in processes]
    except KeyboardInterrupt:  # stop like SageMaker does: SIGTERM to every host
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()
        raise
    finally:
        first = runs[0]
        if first.checkpoint_s3_uri and any(first.paths.checkpoints.iterdir()):
            s3.upload(first.paths.checkpoints, first.checkpoint_s3_uri, s3_client)
    return next((code for code in codes if code), 0)


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
        env = process_environment(environment)
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
        if run.checkpoint_s3_uri and any(run.paths.checkpoints.iterdir()):
            s3.upload(run.paths.checkpoints, run.checkpoint_s3_uri, s3_client)
    return code
