"""The SageMaker job contract, parsed in one place.

Training jobs (`docker run IMAGE train`) see:
    <root>/input/config/{hyperparameters,inputdataconfig,resourceconfig,checkpointconfig}.json
    <root>/input/data/<channel>/        one folder per input channel
    <root>/model/                        -> model.tar.gz
    <root>/output/data/                  -> output.tar.gz
    <root>/output/failure                first 1024 chars -> FailureReason
    <root>/checkpoints/                  synced with the checkpoint S3 URI

Processing jobs (ContainerEntrypoint/ContainerArguments) see:
    <root>/processing/input/<name>/, <root>/processing/output/<name>/
    <root>/config/processingjobconfig.json
    <root>/output/message                first 1 KB -> ExitMessage

`SM_*` variables are set by the training toolkit, not by SageMaker; we honour
them when present (local runs) and otherwise read the files.

This module must not import torch: the launcher uses it on a laptop.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ML_ROOT = Path("/opt/ml")


class JobInputError(ValueError):
    """A problem with what the job was given (settings, channels, data).

    Its message is written to the failure file and shown to the user as is.
    """


def decode_hyperparameters(raw: dict[str, str]) -> dict[str, object]:
    """Decode values like the training toolkit: JSON when it parses, else the raw string.

    The SDK JSON-encodes values ("abc" arrives as "\\"abc\\""), the console and
    boto3 users send plain strings; both must work.
    """
    decoded = {}
    for name, value in raw.items():
        if not isinstance(value, str):
            decoded[name] = value
            continue
        try:
            decoded[name] = json.loads(value)
        except ValueError:
            decoded[name] = value
    return decoded


def _rebase(path: str | Path, root: Path) -> Path:
    """Container paths under /opt/ml map into `root` when a local folder stands in for it."""
    path = Path(path)
    try:
        return root / path.relative_to(DEFAULT_ML_ROOT)
    except ValueError:
        return path


def _read_json(path: Path, default):
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise JobInputError(f"{path} is not valid JSON: {exc}") from exc


@dataclass
class TrainingJobEnvironment:
    """Everything a training job reads from its container, as one typed object."""

    root: Path
    hyperparameters: dict[str, object]
    channels: dict[str, Path]
    input_data_config: dict[str, dict]
    resource_config: dict[str, object]
    checkpoint_dir: Path
    model_dir: Path
    output_data_dir: Path
    failure_file: Path
    current_host: str = "algo-1"
    hosts: list[str] = field(default_factory=lambda: ["algo-1"])
    num_cpus: int = 1

    @classmethod
    def from_root(cls, root: Path | str = DEFAULT_ML_ROOT, env: dict[str, str] | None = None):
        env = dict(os.environ if env is None else env)
        root = Path(root)
        config_dir = root / "input" / "config"

        if "SM_HPS" in env:  # the toolkit's variable holds values decoded already
            hyperparameters = json.loads(env["SM_HPS"])
        else:
            hyperparameters = _read_json(config_dir / "hyperparameters.json", {})
        if not isinstance(hyperparameters, dict):
            raise JobInputError("hyperparameters must be a JSON object of name -> value")
        hyperparameters = decode_hyperparameters(hyperparameters)

        input_data_config = _read_json(config_dir / "inputdataconfig.json", {})
        resource_config = _read_json(config_dir / "resourceconfig.json", {})
        checkpoint_config = _read_json(config_dir / "checkpointconfig.json", {})

        data_dir = root / "input" / "data"
        channels: dict[str, Path] = {}
        names = set(input_data_config)
        if data_dir.is_dir():
            names |= {p.name for p in data_dir.iterdir() if p.is_dir()}
        for name in sorted(names):
            channels[name] = data_dir / name
        for key, value in env.items():  # SM_CHANNEL_<NAME> overrides (local runs)
            if key.startswith("SM_CHANNEL_") and key != "SM_CHANNELS":
                channels[key[len("SM_CHANNEL_") :].lower()] = Path(value)

        checkpoint_dir = _rebase(checkpoint_config.get("LocalPath") or DEFAULT_ML_ROOT / "checkpoints", root)
        return cls(
            root=root,
            hyperparameters=hyperparameters,
            channels=channels,
            input_data_config=input_data_config,
            resource_config=resource_config,
            checkpoint_dir=Path(env.get("SM_CHECKPOINT_DIR", checkpoint_dir)),
            model_dir=Path(env.get("SM_MODEL_DIR", root / "model")),
            output_data_dir=Path(env.get("SM_OUTPUT_DATA_DIR", root / "output" / "data")),
            failure_file=root / "output" / "failure",
            current_host=str(resource_config.get("current_host", env.get("SM_CURRENT_HOST", "algo-1"))),
            hosts=list(resource_config.get("hosts", ["algo-1"])),
            num_cpus=int(env.get("SM_NUM_CPUS", os.cpu_count() or 1)),
        )

    def channel(self, name: str) -> Path | None:
        """The folder of a channel if it was given and holds something, else None."""
        path = self.channels.get(name)
        if path is not None and path.is_dir() and any(path.iterdir()):
            return path
        return None


@dataclass
class ProcessingJobEnvironment:
    """Everything a processing job reads from its container."""

    root: Path
    inputs: dict[str, Path]
    outputs: dict[str, Path]
    job_config: dict[str, object]
    message_file: Path
    failure_file: Path

    @classmethod
    def from_root(cls, root: Path | str = DEFAULT_ML_ROOT):
        root = Path(root)
        job_config = _read_json(root / "config" / "processingjobconfig.json", {})
        inputs: dict[str, Path] = {}
        outputs: dict[str, Path] = {}
        # The job config names where each input/output lives; fall back to the
        # conventional folders when it is absent (local runs).
        for item in job_config.get("ProcessingInputs", []) or []:
            s3_input = item.get("S3Input") or {}
            if s3_input.get("LocalPath"):
                inputs[item["InputName"]] = _rebase(s3_input["LocalPath"], root)
        outputs_cfg = (job_config.get("ProcessingOutputConfig") or {}).get("Outputs", []) or []
        for item in outputs_cfg:
            s3_output = item.get("S3Output") or {}
            if s3_output.get("LocalPath"):
                outputs[item["OutputName"]] = _rebase(s3_output["LocalPath"], root)
        input_dir = root / "processing" / "input"
        if input_dir.is_dir():
            for path in input_dir.iterdir():
                if path.is_dir():
                    inputs.setdefault(path.name, path)
        return cls(
            root=root,
            inputs=inputs,
            outputs=outputs,
            job_config=job_config,
            message_file=root / "output" / "message",
            failure_file=root / "output" / "failure",
        )

    def input(self, name: str) -> Path | None:
        path = self.inputs.get(name)
        if path is not None and path.exists() and (path.is_file() or any(path.iterdir())):
            return path
        return None

    def output(self, name: str) -> Path:
        return self.outputs.get(name, self.root / "processing" / "output" / name)


def write_failure(path: Path, message: str) -> None:
    """Write the reason a job failed where SageMaker reads it (first 1024 chars shown)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(message if message.endswith("\n") else message + "\n")
