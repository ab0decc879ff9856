"""Where everything lives in SageMaker's `/opt/ml`, defined once for both sides: the jobs that
read the folder and the writers that lay it out (the demo, the tests, the launcher's local runs).

A training job (`docker run IMAGE train`) sees:
    input/config/{hyperparameters,inputdataconfig,resourceconfig,checkpointconfig}.json
    input/data/<channel>/        one folder per input channel
    model/                       -> model.tar.gz
    output/data/                 -> output.tar.gz
    output/failure               first 1024 characters -> FailureReason
    output/tensorboard/          TensorBoard event files (TensorBoardOutputConfig syncs them to S3)
    checkpoints/                 synced with the job's checkpoint S3 URI
A processing job (ContainerEntrypoint + ContainerArguments) sees:
    config/processingjobconfig.json, config/resourceconfig.json
    processing/input/<name>/, processing/output/<name>/
    output/message               first 1 KB -> ExitMessage

Any local folder can stand in for `/opt/ml`; `MlPaths(ML_ROOT)` gives the container's own paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

ML_ROOT = Path("/opt/ml")

# Channels of the train job; the evaluate job takes the same inputs plus the train job's outputs.
TRAIN_CHANNELS = ("base_model", "peft_checkpoint", "dataset", "reward_model")
EVAL_INPUTS = (*TRAIN_CHANNELS, "judge_model", "detoxified", "training_output")
REPORT_OUTPUT = "report"

# What the train job writes into model/ and output/data/.
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.bin"
VALUE_HEAD_WEIGHTS = "value_head.bin"
ADAPTER_INFO = "adapter_info.json"
METRICS_FILE = "metrics.jsonl"
TRAINING_SUMMARY = "training_summary.json"


@dataclass(frozen=True)
class MlPaths:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    # Training jobs.
    @property
    def config_dir(self) -> Path:
        return self.root / "input" / "config"

    @property
    def hyperparameters(self) -> Path:
        return self.config_dir / "hyperparameters.json"

    @property
    def input_data_config(self) -> Path:
        return self.config_dir / "inputdataconfig.json"

    @property
    def resource_config(self) -> Path:
        return self.config_dir / "resourceconfig.json"

    @property
    def checkpoint_config(self) -> Path:
        return self.config_dir / "checkpointconfig.json"

    @property
    def data_dir(self) -> Path:
        return self.root / "input" / "data"

    def channel(self, name: str) -> Path:
        return self.data_dir / name

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def output_data_dir(self) -> Path:
        return self.root / "output" / "data"

    @property
    def tensorboard(self) -> Path:
        return self.root / "output" / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def failure(self) -> Path:
        return self.root / "output" / "failure"

    # Processing jobs.
    @property
    def processing_job_config(self) -> Path:
        return self.root / "config" / "processingjobconfig.json"

    @property
    def processing_resource_config(self) -> Path:
        return self.root / "config" / "resourceconfig.json"

    @property
    def processing_input_dir(self) -> Path:
        return self.root / "processing" / "input"

    def processing_input(self, name: str) -> Path:
        return self.processing_input_dir / name

    def processing_output(self, name: str) -> Path:
        return self.root / "processing" / "output" / name

    @property
    def message(self) -> Path:
        return self.root / "output" / "message"

    # Between the two views of one folder.
    def container_path(self, path: Path) -> str:
        """The path inside the container of `path`, which lies under `root`."""
        return str(PurePosixPath(ML_ROOT) / Path(path).relative_to(self.root).as_posix())

    def local_path(self, container_path: str | Path) -> Path:
        """Where a container path (under /opt/ml) lies under `root`; other paths stay as they are."""
        path = Path(container_path)
        try:
            return self.root / path.relative_to(ML_ROOT)
        except ValueError:
            return path


CONTAINER = MlPaths(ML_ROOT)
