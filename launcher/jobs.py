"""What a train or evaluate job is, independent of where it runs (SageMaker or local).

Settings are validated here, on the laptop, with the jobs' own parsers, so a typo fails in a
second instead of after the instance has started.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from flan_t5_detox.contract import s3
from flan_t5_detox.contract.metrics import metric_definitions
from flan_t5_detox.contract.paths import EVAL_INPUTS, REPORT_OUTPUT, TRAIN_CHANNELS
from flan_t5_detox.contract.settings import EvalConfig, encode_hyperparameters, parse_settings

from .errors import LaunchError
from .options import Options

EVALUATE_ENTRYPOINT = ["evaluate"]


def timestamp() -> str:
    """UTC `YYYY-mm-dd-HH-MM-SS-mmm`, as the SageMaker SDK stamps job names."""
    now = time.time()
    return time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime(now)) + f"-{int(now * 1000) % 1000:03d}"


def job_name(base: str, stamp: str | None = None) -> str:
    """`base-<timestamp>` within SageMaker's 63 characters."""
    stamp = stamp or timestamp()
    return f"{base[: 63 - len(stamp) - 1]}-{stamp}"


@dataclass
class Resources:
    instance_type: str = "ml.m5.2xlarge"
    instance_count: int = 1
    volume_size: int = 30
    max_run: int = 24 * 3600


@dataclass
class TrainJob:
    name: str
    image: str
    hyperparameters: dict[str, str]  # as sent: every value JSON-encoded, like the SDK's frameworks
    channels: dict[str, str]  # channel -> S3 URI (or local path for local runs)
    resources: Resources
    role: str = ""
    output_path: str = ""  # SageMaker writes <output_path>/<name>/output/{model,output}.tar.gz
    checkpoint_s3_uri: str = ""
    tensorboard_s3_uri: str = ""  # TensorBoardOutputConfig: where /opt/ml/output/tensorboard goes
    spot: bool = False
    max_wait: int | None = None
    keep_alive: int | None = None  # warm pool: KeepAlivePeriodInSeconds
    tags: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    metric_definitions: list[dict[str, str]] = field(default_factory=metric_definitions)

    @property
    def model_artifacts(self) -> str:
        return s3.join(self.output_path, self.name, "output", "model.tar.gz")

    @property
    def output_artifacts(self) -> str:
        return s3.join(self.output_path, self.name, "output", "output.tar.gz")


@dataclass
class EvalJob:
    name: str
    image: str
    arguments: list[str]  # ContainerArguments: --field-name VALUE for each EvalConfig setting given
    inputs: dict[str, str]  # input name -> S3 URI (or local path for local runs)
    resources: Resources
    role: str = ""
    report_uri: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=lambda: list(EVALUATE_ENTRYPOINT))


def eval_arguments(values: dict) -> list[str]:
    """Validate against EvalConfig, then `--field-name VALUE` pairs for ContainerArguments."""
    config = parse_settings(EvalConfig, values)
    arguments = []
    for name in values:
        arguments += ["--" + name.replace("_", "-"), str(getattr(config, name))]
    return arguments


def _require(value, flag: str, env: str):
    if not value:
        raise LaunchError(f"missing {flag}: pass {flag}, set {env}, or put it in the config file")
    return value


def _resources(options: Options) -> Resources:
    for name in ("instance_count", "volume_size", "max_run"):
        if getattr(options, name) < 1:
            raise LaunchError(f"{name.replace('_', '-')} must be >= 1")
    return Resources(options.instance_type, options.instance_count, options.volume_size, options.max_run)


def output_path(options: Options) -> str:
    if options.output_path:
        s3.parse_s3_uri(options.output_path)
        return options.output_path.rstrip("/")
    bucket = _require(options.bucket, "--bucket", "DETOX_BUCKET")
    return s3.join(f"s3://{bucket}", options.prefix) if options.prefix else f"s3://{bucket}"


def _inputs(options: Options, names: tuple[str, ...], cloud: bool) -> dict[str, str]:
    inputs = {}
    for name in names:
        value = getattr(options, name)
        if not value:
            continue
        if value.startswith("s3://"):
            s3.parse_s3_uri(value)
        elif cloud:
            flag = "--" + name.replace("_", "-")
            raise LaunchError(
                f"{flag} must be an S3 URI for SageMaker, got {value!r}; "
                f"upload it first: detox-launch upload {value} s3://BUCKET/PREFIX/{name}/"
            )
        elif not Path(value).exists():
            raise LaunchError(f"--{name.replace('_', '-')}: {value} does not exist")
        inputs[name] = value
    return inputs


def train_job(options: Options, cloud: bool = True, name: str | None = None) -> TrainJob:
    image = _require(options.image, "--image", "DETOX_IMAGE") if cloud or options.docker else ""
    role = _require(options.role, "--role", "DETOX_ROLE") if cloud else ""
    name = name or options.job_name or job_name("detox-train")
    out = output_path(options) if cloud else ""
    hyperparameters = encode_hyperparameters(options.hyperparameters)
    if options.spot and not cloud:
        raise LaunchError("--spot applies to SageMaker jobs only")
    max_wait = (options.max_wait or 2 * options.max_run) if options.spot else None
    if max_wait is not None and max_wait < options.max_run:
        raise LaunchError("--max-wait must be >= --max-run (it includes the run time)")
    keep_alive = _keep_alive(options, cloud)
    checkpoint = options.checkpoint_s3_uri or (s3.join(out, name, "checkpoints") if cloud else "")
    if checkpoint:
        s3.parse_s3_uri(checkpoint)
    tensorboard = options.tensorboard_s3_uri or ""
    if tensorboard and not cloud:
        raise LaunchError(
            "--tensorboard-s3-uri applies to SageMaker jobs only; a local run keeps its event files "
            "in WORK_DIR/output/tensorboard (tensorboard --logdir WORK_DIR/output/tensorboard)"
        )
    if tensorboard:
        s3.parse_s3_uri(tensorboard)
    return TrainJob(
        name=name,
        image=image,
        hyperparameters=hyperparameters,
        channels=_inputs(options, TRAIN_CHANNELS, cloud),
        resources=_resources(options),
        role=role,
        output_path=out,
        checkpoint_s3_uri=checkpoint,
        tensorboard_s3_uri=tensorboard,
        spot=options.spot,
        max_wait=max_wait,
        keep_alive=keep_alive,
        tags={str(k): str(v) for k, v in options.tags.items()},
        environment={str(k): str(v) for k, v in options.environment.items()},
    )


MAX_KEEP_ALIVE = 3600  # SageMaker's limit on KeepAlivePeriodInSeconds


def _keep_alive(options: Options, cloud: bool) -> int | None:
    """The warm pool's keep-alive; SageMaker keeps no warm pool for spot jobs, nor for local runs."""
    if options.keep_alive is None:
        return None
    if not cloud:
        raise LaunchError("--keep-alive applies to SageMaker jobs only")
    if options.spot:
        raise LaunchError(
            "--keep-alive cannot be used with --spot: SageMaker keeps no warm pool for spot jobs"
        )
    if not 1 <= options.keep_alive <= MAX_KEEP_ALIVE:
        raise LaunchError(f"--keep-alive must be 1-{MAX_KEEP_ALIVE} seconds, got {options.keep_alive}")
    return options.keep_alive


def eval_job(options: Options, cloud: bool = True, name: str | None = None) -> EvalJob:
    image = _require(options.image, "--image", "DETOX_IMAGE") if cloud or options.docker else ""
    role = _require(options.role, "--role", "DETOX_ROLE") if cloud else ""
    name = name or options.job_name or job_name("detox-evaluate")
    inputs = _inputs(options, EVAL_INPUTS, cloud)
    if "detoxified" not in inputs:
        raise LaunchError(
            "nothing to evaluate: pass --train-job NAME or --detoxified (the train job's model.tar.gz)"
        )
    return EvalJob(
        name=name,
        image=image,
        arguments=eval_arguments(options.evaluate),
        inputs=inputs,
        resources=_resources(options),
        role=role,
        report_uri=s3.join(output_path(options), name, REPORT_OUTPUT) if cloud else "",
        tags={str(k): str(v) for k, v in options.tags.items()},
        environment={str(k): str(v) for k, v in options.environment.items()},
    )


MERGE_ARGUMENTS = ["merge"]  # `evaluate merge`: the report from a sharded evaluation's parts


def merge_job(sharded: EvalJob) -> EvalJob:
    """The one-instance job that builds the report of `sharded` (an evaluation on several
    instances, whose report output holds one part per host) from its parts."""
    name = f"{sharded.name[:57]}-merge"
    # report_uri is <output path>/<job name>/report: the merge writes beside the sharded job.
    output = sharded.report_uri.rsplit("/", 2)[0] if sharded.report_uri else ""
    return dataclasses.replace(
        sharded,
        name=name,
        arguments=list(MERGE_ARGUMENTS),
        inputs={"parts": sharded.report_uri},
        resources=dataclasses.replace(sharded.resources, instance_count=1),
        report_uri=s3.join(output, name, REPORT_OUTPUT) if output else "",
    )
