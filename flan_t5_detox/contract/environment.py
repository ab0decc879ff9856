"""The job contract as the jobs read it: each job's whole environment parsed in one place into
one typed object (paths in `paths.py`).

`SM_*` variables are set by the training toolkit, not by SageMaker; they are honoured when
present (local runs), otherwise the files are read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.contract.paths import ML_ROOT, MlPaths


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
    hosts: list[str] = field(default_factory=lambda: ["algo-1"])  # sorted, as SageMaker lists them
    network_interface_name: str = ""  # the interface the hosts reach each other on
    num_cpus: int = 1

    @property
    def host_index(self) -> int:
        """This host's place in `hosts`: its node rank in data-parallel training."""
        return _host_index(self.current_host, self.hosts)

    @classmethod
    def from_root(cls, root: Path | str = ML_ROOT, env: dict[str, str] | None = None):
        env = dict(os.environ if env is None else env)
        root = Path(root)
        paths = MlPaths(root)

        if "SM_HPS" in env:  # the toolkit's variable holds values decoded already
            hyperparameters = json.loads(env["SM_HPS"])
        else:
            hyperparameters = _read_json(paths.hyperparameters, {})
        if not isinstance(hyperparameters, dict):
            raise JobInputError("hyperparameters must be a JSON object of name -> value")
        hyperparameters = decode_hyperparameters(hyperparameters)

        input_data_config = _read_json(paths.input_data_config, {})
        resource_config = _read_json(paths.resource_config, {})
        checkpoint_config = _read_json(paths.checkpoint_config, {})

        data_dir = paths.data_dir
        channels: dict[str, Path] = {}
        names = set(input_data_config)
        if data_dir.is_dir():
            names |= {p.name for p in data_dir.iterdir() if p.is_dir()}
        for name in sorted(names):
            channels[name] = data_dir / name
        for key, value in env.items():  # SM_CHANNEL_<NAME> overrides (local runs)
            if key.startswith("SM_CHANNEL_") and key != "SM_CHANNELS":
                channels[key[len("SM_CHANNEL_") :].lower()] = Path(value)

        checkpoint_dir = paths.local_path(checkpoint_config.get("LocalPath") or paths.checkpoints)
        return cls(
            root=root,
            hyperparameters=hyperparameters,
            channels=channels,
            input_data_config=input_data_config,
            resource_config=resource_config,
            checkpoint_dir=Path(env.get("SM_CHECKPOINT_DIR", checkpoint_dir)),
            model_dir=Path(env.get("SM_MODEL_DIR", paths.model_dir)),
            output_data_dir=Path(env.get("SM_OUTPUT_DATA_DIR", paths.output_data_dir)),
            failure_file=paths.failure,
            current_host=str(resource_config.get("current_host", env.get("SM_CURRENT_HOST", "algo-1"))),
            hosts=sorted(resource_config.get("hosts", ["algo-1"])),
            network_interface_name=str(resource_config.get("network_interface_name", "")),
            num_cpus=int(env.get("SM_NUM_CPUS", os.cpu_count() or 1)),
        )

    def channel(self, name: str) -> Path | None:
        """The folder of a channel if the job was given it, else None. A channel given but empty
        is an error, never a silent fall back to the hub name."""
        return _given(self.channels.get(name), f"channel {name!r}")


@dataclass
class ProcessingJobEnvironment:
    """Everything a processing job reads from its container."""

    root: Path
    inputs: dict[str, Path]
    outputs: dict[str, Path]
    job_config: dict[str, object]
    message_file: Path
    failure_file: Path
    current_host: str = "algo-1"
    hosts: list[str] = field(default_factory=lambda: ["algo-1"])  # sorted, as SageMaker lists them

    @property
    def host_index(self) -> int:
        """This host's place in `hosts`: which shard of the work it does."""
        return _host_index(self.current_host, self.hosts)

    @classmethod
    def from_root(cls, root: Path | str = ML_ROOT):
        root = Path(root)
        paths = MlPaths(root)
        job_config = _read_json(paths.processing_job_config, {})
        inputs: dict[str, Path] = {}
        outputs: dict[str, Path] = {}
        # The job config names where each input/output lives; fall back to the
        # conventional folders when it is absent (local runs).
        for item in job_config.get("ProcessingInputs", []) or []:
            s3_input = item.get("S3Input") or {}
            if s3_input.get("LocalPath"):
                inputs[item["InputName"]] = paths.local_path(s3_input["LocalPath"])
        outputs_cfg = (job_config.get("ProcessingOutputConfig") or {}).get("Outputs", []) or []
        for item in outputs_cfg:
            s3_output = item.get("S3Output") or {}
            if s3_output.get("LocalPath"):
                outputs[item["OutputName"]] = paths.local_path(s3_output["LocalPath"])
        input_dir = paths.processing_input_dir
        if input_dir.is_dir():
            for path in input_dir.iterdir():
                if path.is_dir():
                    inputs.setdefault(path.name, path)
        resource_config = _read_json(paths.processing_resource_config, {})
        return cls(
            root=root,
            inputs=inputs,
            outputs=outputs,
            job_config=job_config,
            message_file=paths.message,
            failure_file=paths.failure,
            current_host=str(resource_config.get("current_host", "algo-1")),
            hosts=sorted(resource_config.get("hosts", ["algo-1"])),
        )

    def input(self, name: str) -> Path | None:
        """The path of an input if the job was given it, else None; given but empty is an error."""
        return _given(self.inputs.get(name), f"input {name!r}")

    def output(self, name: str) -> Path:
        return self.outputs.get(name, MlPaths(self.root).processing_output(name))


def _host_index(current_host: str, hosts: list[str]) -> int:
    if current_host not in hosts:
        raise JobInputError(f"resourceconfig.json: current_host {current_host!r} is not in hosts {hosts}")
    return hosts.index(current_host)


def _given(path: Path | None, what: str) -> Path | None:
    if path is None or not path.exists():
        return None
    if path.is_dir() and not any(path.iterdir()):
        raise JobInputError(
            f"{what} ({path}) is empty: its S3 prefix or local folder held no files. Point it at the "
            "files, or leave it out to use the setting's default"
        )
    return path
