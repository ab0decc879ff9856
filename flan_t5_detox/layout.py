"""Lay out a folder like SageMaker's /opt/ml for a training or processing job.

Used by the offline demo, the tests and the launcher's local runs: the config
files are written exactly as SageMaker writes them (hyperparameters as a
string-to-string map, JSON-encoded like the SDK does).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def _place(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
    if Path(source).is_dir():
        shutil.copytree(source, target)
    else:
        target.mkdir(parents=True)
        shutil.copy2(source, target / Path(source).name)


def write_training_layout(
    root: Path, channels: dict[str, Path], hyperparameters: dict[str, object], instance_type: str = "local"
) -> Path:
    """Create <root>/input/{config,data}, model/, output/, checkpoints/ for a training job."""
    root = Path(root)
    config_dir = root / "input" / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    for name, source in channels.items():
        _place(Path(source), root / "input" / "data" / name)
    encoded = {k: json.dumps(v) for k, v in hyperparameters.items()}  # as the SageMaker SDK encodes them
    (config_dir / "hyperparameters.json").write_text(json.dumps(encoded, indent=2))
    input_config = {
        name: {
            "TrainingInputMode": "File",
            "S3DistributionType": "FullyReplicated",
            "RecordWrapperType": "None",
        }
        for name in channels
    }
    (config_dir / "inputdataconfig.json").write_text(json.dumps(input_config, indent=2))
    resource = {
        "current_host": "algo-1",
        "hosts": ["algo-1"],
        "current_instance_type": instance_type,
        "network_interface_name": "eth0",
    }
    (config_dir / "resourceconfig.json").write_text(json.dumps(resource, indent=2))
    (config_dir / "checkpointconfig.json").write_text(json.dumps({"LocalPath": "/opt/ml/checkpoints"}))
    for sub in ("model", "output/data", "checkpoints"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def write_processing_layout(
    root: Path, inputs: dict[str, Path], outputs: tuple[str, ...] = ("report",)
) -> Path:
    """Create <root>/processing/{input,output} and config/processingjobconfig.json."""
    root = Path(root)
    for name, source in inputs.items():
        _place(Path(source), root / "processing" / "input" / name)
    for name in outputs:
        (root / "processing" / "output" / name).mkdir(parents=True, exist_ok=True)
    job_config = {
        "ProcessingJobName": "local-evaluate",
        "ProcessingInputs": [
            {"InputName": name, "S3Input": {"LocalPath": f"/opt/ml/processing/input/{name}"}}
            for name in inputs
        ],
        "ProcessingOutputConfig": {
            "Outputs": [
                {"OutputName": name, "S3Output": {"LocalPath": f"/opt/ml/processing/output/{name}"}}
                for name in outputs
            ]
        },
    }
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "config" / "processingjobconfig.json").write_text(json.dumps(job_config, indent=2))
    return root
