import dataclasses
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
    assert env.current_host == "algo-1" and env.hosts == ("algo-1",)


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


def test_an_environment_is_read_only_and_derives_its_hosts(tmp_path):
    root = write_training_layout(
        tmp_path / "ml", {}, {}, hosts=["algo-3", "algo-1", "algo-2"], current_host="algo-2"
    )
    env = TrainingJobEnvironment.from_root(root, env={})
    assert env.hosts == ("algo-1", "algo-2", "algo-3")  # sorted, as every host sorts them
    assert (env.host_index, env.master_host, env.network_interface_name) == (1, "algo-1", "eth0")
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.model_dir = tmp_path  # type: ignore[misc]


def test_a_host_not_in_the_hosts_is_a_clear_error(tmp_path):
    root = write_processing_layout(tmp_path / "ml", {})
    (root / "config" / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-9", "hosts": ["algo-1", "algo-2"]})
    )
    env = ProcessingJobEnvironment.from_root(root)
    with pytest.raises(JobInputError, match="current_host 'algo-9' is not in hosts"):
        _ = env.host_index


def test_without_config_files_a_job_is_one_host_with_the_conventional_folders(tmp_path):
    env = TrainingJobEnvironment.from_root(tmp_path, env={"SM_CURRENT_HOST": "algo-1"})
    assert (env.current_host, env.hosts, env.host_index) == ("algo-1", ("algo-1",), 0)
    assert env.hyperparameters == {} and env.channels == {}
    assert env.checkpoint_dir == tmp_path / "checkpoints"
    processing = ProcessingJobEnvironment.from_root(tmp_path)
    assert (processing.inputs, processing.outputs, processing.hosts) == ({}, {}, ("algo-1",))
