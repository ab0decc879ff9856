"""The job contract as the jobs read it: each job's whole environment parsed in one place into
one read-only object (paths in `paths.py`).

Every field is read by a job: what a config file only helps to derive (the channel names of
`inputdataconfig.json`, the processing request) is read here and not kept. The failure and message
files are not fields: a job writes them through `MlPaths` even when its environment cannot be read.

`SM_*` variables are set by the training toolkit, not by SageMaker; they are honoured when
present (local runs), otherwise the files are read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.contract.hosts import host_name
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
    """The JSON in `path`, `default` when there is no such file; malformed JSON is bad input."""
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise JobInputError(f"{path} is not valid JSON: {exc}") from exc


@dataclass(frozen=True, kw_only=True)
class JobHosts:
    """The hosts of a job, sorted as SageMaker lists them, and which of them this one is."""

    current_host: str
    hosts: tuple[str, ...]
    network_interface_name: str = ""  # the interface the hosts reach each other on; "" when not given

    @property
    def master_host(self) -> str:
        """The host whose first process serves the rendezvous: the first of the sorted hosts, as
        every host derives it alike."""
        return self.hosts[0]

    @property
    def host_index(self) -> int:
        """This host's place in `hosts`: its node rank in data-parallel training, its shard of an
        evaluation."""
        if self.current_host not in self.hosts:
            raise JobInputError(
                f"resourceconfig.json: current_host {self.current_host!r} is not in hosts {list(self.hosts)}"
            )
        return self.hosts.index(self.current_host)


def _read_hosts(resource_config: Mapping, current_default: str) -> dict[str, object]:
    """`JobHosts`' fields from a resource config; without one, the job is one host."""
    return {
        "current_host": str(resource_config.get("current_host", current_default)),
        "hosts": tuple(sorted(resource_config.get("hosts", [host_name(0)]))),
        "network_interface_name": str(resource_config.get("network_interface_name", "")),
    }


@dataclass(frozen=True, kw_only=True)
class TrainingJobEnvironment(JobHosts):
    """Everything a training job reads from its container, as one typed object."""

    root: Path
    hyperparameters: dict[str, object]
    channels: dict[str, Path]
    checkpoint_dir: Path
    model_dir: Path
    output_data_dir: Path

    @classmethod
    def from_root(cls, root: Path | str = ML_ROOT, env: Mapping[str, str] | None = None):
        env = dict(os.environ if env is None else env)
        paths = MlPaths(Path(root))
        resource_config = _read_json(paths.resource_config, {})
        checkpoint_config = _read_json(paths.checkpoint_config, {})
        checkpoint_dir = paths.local_path(checkpoint_config.get("LocalPath") or paths.checkpoints)
        return cls(
            root=paths.root,
            hyperparameters=_read_hyperparameters(paths, env),
            channels=_read_channels(paths, env),
            checkpoint_dir=Path(env.get("SM_CHECKPOINT_DIR", checkpoint_dir)),
            model_dir=Path(env.get("SM_MODEL_DIR", paths.model_dir)),
            output_data_dir=Path(env.get("SM_OUTPUT_DATA_DIR", paths.output_data_dir)),
            **_read_hosts(resource_config, env.get("SM_CURRENT_HOST", host_name(0))),
        )

    def channel(self, name: str) -> Path | None:
        """The folder of a channel if the job was given it, else None. A channel given but empty
        is an error, never a silent fall back to the hub name."""
        return _given(self.channels.get(name), f"channel {name!r}")


def _read_hyperparameters(paths: MlPaths, env: Mapping[str, str]) -> dict[str, object]:
    """The decoded hyperparameters: `SM_HPS` (decoded already by the toolkit) or the file."""
    if "SM_HPS" in env:
        hyperparameters = json.loads(env["SM_HPS"])
    else:
        hyperparameters = _read_json(paths.hyperparameters, {})
    if not isinstance(hyperparameters, dict):
        raise JobInputError("hyperparameters must be a JSON object of name -> value")
    return decode_hyperparameters(hyperparameters)


def _read_channels(paths: MlPaths, env: Mapping[str, str]) -> dict[str, Path]:
    """Each channel's folder: those `inputdataconfig.json` names and those present under
    input/data/, then `SM_CHANNEL_<NAME>` overrides (local runs)."""
    names = set(_read_json(paths.input_data_config, {}))
    if paths.data_dir.is_dir():
        names |= {p.name for p in paths.data_dir.iterdir() if p.is_dir()}
    channels = {name: paths.channel(name) for name in sorted(names)}
    for key, value in env.items():
        if key.startswith("SM_CHANNEL_") and key != "SM_CHANNELS":
            channels[key[len("SM_CHANNEL_") :].lower()] = Path(value)
    return channels


@dataclass(frozen=True, kw_only=True)
class ProcessingJobEnvironment(JobHosts):
    """Everything a processing job reads from its container."""

    root: Path
    inputs: dict[str, Path]
    outputs: dict[str, Path]

    @classmethod
    def from_root(cls, root: Path | str = ML_ROOT):
        paths = MlPaths(Path(root))
        # The job config names where each input/output lives; the conventional folders stand in
        # when it is absent (local runs).
        request = _read_json(paths.processing_job_config, {})
        inputs = _local_paths(paths, request.get("ProcessingInputs"), "InputName", "S3Input")
        if paths.processing_input_dir.is_dir():
            for path in paths.processing_input_dir.iterdir():
                if path.is_dir():
                    inputs.setdefault(path.name, path)
        outputs_config = (request.get("ProcessingOutputConfig") or {}).get("Outputs")
        return cls(
            root=paths.root,
            inputs=inputs,
            outputs=_local_paths(paths, outputs_config, "OutputName", "S3Output"),
            **_read_hosts(_read_json(paths.processing_resource_config, {}), host_name(0)),
        )

    def input(self, name: str) -> Path | None:
        """The path of an input if the job was given it, else None; given but empty is an error."""
        return _given(self.inputs.get(name), f"input {name!r}")

    def output(self, name: str) -> Path:
        return self.outputs.get(name, MlPaths(self.root).processing_output(name))


def _local_paths(paths: MlPaths, items: list[dict] | None, name_key: str, s3_key: str) -> dict[str, Path]:
    """Name -> local folder of the processing request's inputs or outputs that have a LocalPath."""
    found = {}
    for item in items or []:
        local = (item.get(s3_key) or {}).get("LocalPath")
        if local:
            found[item[name_key]] = paths.local_path(local)
    return found


def _given(path: Path | None, what: str) -> Path | None:
    """`path` if it exists, None if not; one that exists but is an empty folder is bad input."""
    if path is None or not path.exists():
        return None
    if path.is_dir() and not any(path.iterdir()):
        raise JobInputError(
            f"{what} ({path}) is empty: its S3 prefix or local folder held no files. Point it at the "
            "files, or leave it out to use the setting's default"
        )
    return path
