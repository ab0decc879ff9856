"""Launcher settings, merged like the AWS CLI does: flags > environment > config file > defaults.

Every scalar setting `name` can come from `--name` (dashes), `DETOX_NAME` or `name = ...` in
the config file (`--config FILE` or DETOX_CONFIG; .toml or .json). AWS settings use the AWS
variables instead (AWS_PROFILE, AWS_REGION / AWS_DEFAULT_REGION). The tables `hyperparameters`,
`evaluate`, `tags` and `environment` merge file entries with flag entries (flags win per key).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

from flan_t5_detox.contract.settings import did_you_mean

from .errors import LaunchError

ENV_PREFIX = "DETOX_"
# AWS settings read the AWS CLI's variables, first match wins; botocore reads AWS_PROFILE and
# AWS_DEFAULT_REGION itself, but AWS_REGION (which the AWS CLI v2 prefers) only here.
AWS_ENV = {"profile": ("AWS_PROFILE",), "region": ("AWS_REGION", "AWS_DEFAULT_REGION"), "endpoint_url": ()}


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class Options:
    # AWS, like the AWS CLI.
    profile: str | None = _opt(None, "AWS profile (AWS_PROFILE)")
    region: str | None = _opt(None, "AWS region (AWS_REGION, AWS_DEFAULT_REGION, or the profile's)")
    endpoint_url: str | None = _opt(
        None, "endpoint URL for every AWS service (per service: AWS_ENDPOINT_URL_S3, ..._SAGEMAKER)"
    )
    # What runs where.
    image: str | None = _opt(None, "job image URI (ECR for SageMaker, any local tag for `local`)")
    role: str | None = _opt(None, "IAM role ARN the SageMaker job runs as")
    bucket: str | None = _opt(None, "S3 bucket for outputs (default: output-path's, else required)")
    prefix: str = _opt("flan-t5-detox", "key prefix in the bucket")
    output_path: str | None = _opt(None, "S3 URI jobs write to (default s3://BUCKET/PREFIX)")
    job_name: str | None = _opt(None, "job name (default detox-train-<time> / detox-evaluate-<time>)")
    instance_type: str = _opt("ml.m5.2xlarge", "instance type")
    instance_count: int = _opt(1, "number of instances")
    volume_size: int = _opt(30, "EBS volume size in GB")
    max_run: int = _opt(24 * 3600, "maximum run time in seconds")
    spot: bool = _opt(False, "use managed spot training (resumes from checkpoints)")
    max_wait: int | None = _opt(None, "spot: max seconds to wait for capacity + run (default 2 x max-run)")
    checkpoint_s3_uri: str | None = _opt(None, "S3 URI synced with /opt/ml/checkpoints (default per job)")
    tensorboard_s3_uri: str | None = _opt(
        None, "S3 URI SageMaker syncs the job's TensorBoard event files to while it runs"
    )
    # Inputs: S3 URIs (or local paths for `local`).
    base_model: str | None = _opt(None, "base model folder (else the job's hub name)")
    peft_checkpoint: str | None = _opt(None, "summarization LoRA adapter folder")
    dataset: str | None = _opt(None, "DialogSum-format dataset folder or file")
    reward_model: str | None = _opt(None, "hate-speech reward model folder")
    judge_model: str | None = _opt(None, "evaluate: an independent toxicity classifier (the judge)")
    detoxified: str | None = _opt(None, "evaluate: the train job's model.tar.gz or model folder")
    training_output: str | None = _opt(None, "evaluate: the train job's output.tar.gz (PPO curves)")
    train_job: str | None = _opt(None, "evaluate: take detoxified/training-output from this train job")
    # Warm pools and the native pipeline.
    keep_alive: int | None = _opt(
        None, "train: keep the instances warm this many seconds after the job (KeepAlivePeriodInSeconds)"
    )
    pipeline_name: str = _opt("flan-t5-detox", "pipeline --native: the SageMaker Pipeline's name")
    model_package_group: str = _opt(
        "flan-t5-detox", "pipeline --native: model package group an adapter that passes the gate joins"
    )
    max_rouge_drop: float = _opt(
        0.05, "pipeline --native: the gate fails when ROUGE-L's CI low is below -this"
    )
    # Waiting.
    wait: bool = _opt(False, "wait for the job to end, showing status changes and logs")
    poll: float = _opt(30.0, "seconds between status checks")
    timeout: float = _opt(0.0, "give up waiting after this many seconds (0 = never)")
    logs: bool = _opt(True, "show the job's CloudWatch logs while waiting")
    # Local runs.
    docker: bool = _opt(True, "run the image with docker (--no-docker: plain processes)")
    work_dir: str | None = _opt(None, "local: folder laid out like /opt/ml (default ./detox-local/JOB)")
    network: str | None = _opt(None, "local docker: --network for docker run (e.g. host, none)")
    # Tables (flags: --hp NAME=VALUE, --eval NAME=VALUE, --tag KEY=VALUE, --env KEY=VALUE).
    hyperparameters: dict = field(default_factory=dict)
    evaluate: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)


TABLES = ("hyperparameters", "evaluate", "tags", "environment")
FIELDS = {f.name: f for f in dataclasses.fields(Options)}
TYPES = typing.get_type_hints(Options)


def setting_type(name: str) -> type:
    """The Python type a launcher setting takes (bool, int, float or str), from its annotation."""
    hint = TYPES[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def coerce(name: str, value, source: str):
    """Convert a value from the environment or a config file to the setting's type."""
    kind = setting_type(name)
    if value is None or isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    text = str(value).strip()
    try:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        return kind(text)
    except ValueError:
        raise LaunchError(f"{source}: {name} must be {kind.__name__}, got {value!r}") from None


def load_config_file(path: str | Path) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise LaunchError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import tomllib  # Python 3.11+

            data = tomllib.loads(text)
    except ImportError:
        raise LaunchError(f"{path}: TOML config files need Python 3.11+; use a .json file") from None
    except ValueError as exc:
        raise LaunchError(
            f"{path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise LaunchError(f"{path}: expected a table of settings")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        hints = [did_you_mean(u, FIELDS) for u in unknown]
        raise LaunchError(f"{path}: unknown setting(s) {', '.join(hints)}")
    for name in TABLES:
        if not isinstance(data.get(name, {}), dict):
            raise LaunchError(f"{path}: {name} must be a table of name = value")
    return data


def resolve(flags: dict, environ: dict[str, str] | None = None) -> Options:
    """Merge flags (None = not given), environment and the config file into Options."""
    environ = dict(os.environ if environ is None else environ)
    config_path = flags.get("config") or environ.get(ENV_PREFIX + "CONFIG")
    source = str(config_path)
    from_file = load_config_file(config_path) if config_path else {}
    values = {}
    for name in FIELDS:
        if name in TABLES:
            table = {str(k): v for k, v in from_file.get(name, {}).items()}
            table.update(flags.get(name) or {})
            values[name] = table
            continue
        if flags.get(name) is not None:
            values[name] = flags[name]
            continue
        env_names = AWS_ENV.get(name, (ENV_PREFIX + name.upper(),))
        env_name = next((n for n in env_names if environ.get(n)), None)
        if env_name:
            values[name] = coerce(name, environ[env_name], env_name)
        elif name in from_file:
            values[name] = coerce(name, from_file[name], source)
    options = Options(**values)
    if options.job_name is not None:
        check_job_name(options.job_name)
    return options


# SageMaker's rule for training and processing job names.
JOB_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")


def check_job_name(name: str) -> None:
    """Refuse a name SageMaker would refuse, before anything is called or written (a local run
    uses the name as a folder, so the rule also keeps it inside the work folder)."""
    if not JOB_NAME.fullmatch(name):
        raise LaunchError(
            f"job name {name!r} is not valid: SageMaker wants 1-63 letters, digits and hyphens, "
            "starting and ending with a letter or digit (e.g. detox-train-7)"
        )


def parse_pairs(items: list[str] | None, what: str, decode: bool = False) -> dict:
    """`["a=1", "b=x"]` -> {"a": 1, "b": "x"}; values decoded like the jobs do when `decode`."""
    pairs = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise LaunchError(f"{what} must look like NAME=VALUE, got {item!r}")
        if decode:
            try:
                value = json.loads(value)
            except ValueError:
                pass
        pairs[name.strip()] = value
    return pairs
