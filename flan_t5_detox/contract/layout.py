"""The one writer of `/opt/ml` layouts, used by the offline demo, the tests and the launcher's
local runs. Config files are written as SageMaker writes them: hyperparameters as a
string-to-string map JSON-encoded like the SDK's, the processing job's request as
`processingjobconfig.json`, the hosts in `resourceconfig.json`.

Inputs are placed by copying (`copy`), by a symbolic link (`link`: no copy of a multi-GB
model for a plain process), or not at all (the launcher bind-mounts them into a container).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from flan_t5_detox.contract.hosts import host_name, host_names
from flan_t5_detox.contract.paths import CONTAINER, REPORT_OUTPUT, MlPaths
from flan_t5_detox.contract.settings import encode_hyperparameters

HOST = host_name(0)  # the one host of a one-instance job


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def place(source: Path, target: Path, how: str = "copy") -> None:
    """Make `target` a folder holding `source`: the folder itself, or a file inside it, as an S3
    prefix or object input appears in a job. `how` is "copy" or "link"."""
    source, target = Path(source).resolve(), Path(target)
    if how not in ("copy", "link"):
        raise ValueError(f"how must be 'copy' or 'link', got {how!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_file():
        if target.is_symlink():
            target.unlink()
        target.mkdir(parents=True, exist_ok=True)
        target = target / source.name
    _remove(target)
    if how == "link":
        target.symlink_to(source, target_is_directory=source.is_dir())
    elif source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)


def training_resource_config(instance_type: str, hosts: Iterable[str] = (HOST,), current: str = HOST) -> dict:
    hosts = sorted(hosts)
    return {
        "current_host": current,
        "current_instance_type": instance_type,
        "current_group_name": "homogeneousCluster",
        "hosts": hosts,
        "instance_groups": [
            {"instance_group_name": "homogeneousCluster", "instance_type": instance_type, "hosts": hosts}
        ],
        "network_interface_name": "eth0",
    }


def write_training_config(
    paths: MlPaths,
    hyperparameters: dict[str, str],
    channels: Iterable[str],
    instance_type: str = "local",
    checkpoint_s3_uri: str = "",
    hosts: Iterable[str] = (HOST,),
    current_host: str = HOST,
) -> None:
    """The four config files of a training job (of `current_host`, one of `hosts`), and its
    empty output folders.

    `hyperparameters` is the string-to-string map as sent (see `settings.encode_hyperparameters`)."""
    _write_json(paths.hyperparameters, hyperparameters)
    input_config = {
        name: {
            "TrainingInputMode": "File",
            "S3DistributionType": "FullyReplicated",
            "RecordWrapperType": "None",
        }
        for name in channels
    }
    _write_json(paths.input_data_config, input_config)
    _write_json(paths.resource_config, training_resource_config(instance_type, hosts, current_host))
    checkpoint = {"LocalPath": str(CONTAINER.checkpoints)}
    if checkpoint_s3_uri:
        checkpoint["S3Uri"] = checkpoint_s3_uri
    _write_json(paths.checkpoint_config, checkpoint)
    for folder in (paths.model_dir, paths.output_data_dir, paths.checkpoints, paths.data_dir):
        folder.mkdir(parents=True, exist_ok=True)


# What every processing input and output of the request states besides its name and places.
S3_INPUT_OPTIONS = {
    "S3DataType": "S3Prefix",
    "S3InputMode": "File",
    "S3DataDistributionType": "FullyReplicated",
    "S3CompressionType": "None",
}
S3_OUTPUT_OPTIONS = {"S3UploadMode": "EndOfJob"}


def _processing_entry(kind: str, name: str, uri: str, local_path: Path, options: dict) -> dict:
    """One entry of the request's inputs or outputs (`kind` "Input" or "Output")."""
    return {
        f"{kind}Name": name,
        "AppManaged": False,
        f"S3{kind}": {"S3Uri": uri, "LocalPath": str(local_path), **options},
    }


def write_processing_config(
    paths: MlPaths,
    job_name: str,
    inputs: dict[str, str],
    outputs: dict[str, str],
    instance_type: str = "local",
    instance_count: int = 1,
    volume_size: int = 30,
    max_run: int = 24 * 3600,
    image: str = "",
    entrypoint: list[str] | None = None,
    arguments: list[str] | None = None,
    environment: dict[str, str] | None = None,
    role: str = "",
    current_host: str = HOST,
) -> None:
    """`processingjobconfig.json` (the CreateProcessingJob request, as SageMaker writes it) and
    `resourceconfig.json` (`current_host` of `instance_count` hosts). `inputs` and `outputs` map
    names to their S3 (or file) URIs."""
    request = {
        "ProcessingJobName": job_name,
        "ProcessingInputs": [
            _processing_entry("Input", name, uri, CONTAINER.processing_input(name), S3_INPUT_OPTIONS)
            for name, uri in inputs.items()
        ],
        "ProcessingOutputConfig": {
            "Outputs": [
                _processing_entry("Output", name, uri, CONTAINER.processing_output(name), S3_OUTPUT_OPTIONS)
                for name, uri in outputs.items()
            ]
        },
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": instance_count,
                "InstanceType": instance_type,
                "VolumeSizeInGB": volume_size,
            }
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": max_run},
        "AppSpecification": {
            "ImageUri": image,
            "ContainerEntrypoint": list(entrypoint or []),
            "ContainerArguments": list(arguments or []),
        },
        "Environment": dict(environment or {}),
        "RoleArn": role,
    }
    _write_json(paths.processing_job_config, request)
    hosts = host_names(instance_count)
    _write_json(paths.processing_resource_config, {"current_host": current_host, "hosts": hosts})
    for name in outputs:
        paths.processing_output(name).mkdir(parents=True, exist_ok=True)
    paths.message.parent.mkdir(parents=True, exist_ok=True)


def write_training_layout(
    root: Path,
    channels: dict[str, Path],
    hyperparameters: dict[str, object],
    instance_type: str = "local",
    how: str = "copy",
    hosts: Iterable[str] = (HOST,),
    current_host: str = HOST,
) -> Path:
    """A complete training-job folder (of `current_host`, one of `hosts`) with each channel's
    local source placed in it. `hyperparameters` are written as given, unchecked: the job itself
    must reject bad ones, and tests lay out such jobs to show that it does."""
    paths = MlPaths(Path(root))
    sent = encode_hyperparameters(hyperparameters, check=False)
    write_training_config(paths, sent, channels, instance_type, "", hosts, current_host)
    for name, source in channels.items():
        place(Path(source), paths.channel(name), how)
    return paths.root


def write_processing_layout(
    root: Path,
    inputs: dict[str, Path],
    outputs: tuple[str, ...] = (REPORT_OUTPUT,),
    arguments: list[str] | None = None,
    how: str = "copy",
) -> Path:
    """A complete processing-job folder with each input's local source placed in it."""
    paths = MlPaths(Path(root))
    write_processing_config(
        paths,
        "local-evaluate",
        {name: Path(source).resolve().as_uri() for name, source in inputs.items()},
        {name: "" for name in outputs},
        entrypoint=["evaluate"],
        arguments=arguments,
    )
    for name, source in inputs.items():
        place(Path(source), paths.processing_input(name), how)
    return paths.root
