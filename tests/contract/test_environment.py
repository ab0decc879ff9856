import json

import pytest

from flan_t5_detox.contract.environment import (
    ProcessingJobEnvironment,
    TrainingJobEnvironment,
    decode_hyperparameters,
)
from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.contract.layout import write_processing_layout, write_training_layout


def test_decode_accepts_raw_and_sdk_json_encoded_values():
    raw = {"a": "0.5", "b": '"abc"', "c": "abc", "d": "true", "e": "[1, 2]", "f": "16"}
    assert decode_hyperparameters(raw) == {"a": 0.5, "b": "abc", "c": "abc", "d": True, "e": [1, 2], "f": 16}


def test_training_environment_reads_every_config_file(tmp_path):
    data = tmp_path / "src"
    data.mkdir()
    (data / "x.jsonl").write_text("{}\n")
    root = write_training_layout(
        tmp_path / "ml", {"dataset": data}, {"batch_size": 8, "reward_label": "nothate"}
    )
    env = TrainingJobEnvironment.from_root(root, env={})
    assert env.hyperparameters == {"batch_size": 8, "reward_label": "nothate"}
    assert env.channel("dataset") == root / "input" / "data" / "dataset"
    assert env.channel("base_model") is None
    # checkpointconfig.json names /opt/ml/checkpoints; a local root stands in for /opt/ml.
    assert env.checkpoint_dir == root / "checkpoints"
    assert env.model_dir == root / "model" and env.output_data_dir == root / "output" / "data"
    assert env.current_host == "algo-1" and env.hosts == ["algo-1"]


def test_sm_variables_override_files(tmp_path):
    root = write_training_layout(tmp_path / "ml", {}, {"batch_size": 8})
    env = TrainingJobEnvironment.from_root(
        root,
        env={
            "SM_HPS": json.dumps({"batch_size": 4}),
            "SM_CHANNEL_DATASET": str(tmp_path),
            "SM_MODEL_DIR": "/m",
        },
    )
    assert env.hyperparameters == {"batch_size": 4}
    assert env.channels["dataset"] == tmp_path
    assert str(env.model_dir) == "/m"


def test_malformed_hyperparameters_file_is_a_clear_error(tmp_path):
    root = write_training_layout(tmp_path / "ml", {}, {})
    (root / "input" / "config" / "hyperparameters.json").write_text("{not json")
    with pytest.raises(JobInputError, match="hyperparameters.json is not valid JSON"):
        TrainingJobEnvironment.from_root(root, env={})


def test_processing_environment_maps_inputs_and_outputs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("x")
    root = write_processing_layout(tmp_path / "ml", {"dataset": src})
    env = ProcessingJobEnvironment.from_root(root)
    assert env.input("dataset") == root / "processing" / "input" / "dataset"
    assert env.input("detoxified") is None
    assert env.output("report") == root / "processing" / "output" / "report"
    assert env.message_file == root / "output" / "message"


def test_an_empty_channel_or_input_is_reported_never_replaced_by_the_hub_name(tmp_path):
    root = write_training_layout(tmp_path / "train", {}, {})
    (root / "input" / "data" / "base_model").mkdir(parents=True)
    env = TrainingJobEnvironment.from_root(root, env={})
    with pytest.raises(JobInputError, match=r"channel 'base_model' \(.*base_model\) is empty"):
        env.channel("base_model")
    assert env.channel("dataset") is None  # not given at all: the job may use its default
    root = write_processing_layout(tmp_path / "evaluate", {})
    (root / "processing" / "input" / "dataset").mkdir(parents=True)
    with pytest.raises(JobInputError, match="input 'dataset' .* is empty"):
        ProcessingJobEnvironment.from_root(root).input("dataset")
