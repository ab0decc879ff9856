import json

import pytest

from flan_t5_detox.contract.environment import ProcessingJobEnvironment, TrainingJobEnvironment
from flan_t5_detox.contract.layout import (
    place,
    write_processing_config,
    write_processing_layout,
    write_training_layout,
)
from flan_t5_detox.contract.paths import CONTAINER, MlPaths


@pytest.mark.parametrize("how", ["copy", "link"])
def test_place_puts_a_folder_or_a_file_where_the_job_finds_it(tmp_path, how):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    single = tmp_path / "data.jsonl"
    single.write_text("{}\n")
    place(folder, tmp_path / "ml" / "a", how)
    place(single, tmp_path / "ml" / "b", how)
    place(folder, tmp_path / "ml" / "a", how)  # again: replaced, not nested
    assert (tmp_path / "ml" / "a" / "config.json").read_text() == "{}"
    assert (tmp_path / "ml" / "b" / "data.jsonl").read_text() == "{}\n"
    assert (tmp_path / "ml" / "a").is_symlink() == (how == "link")
    assert not (tmp_path / "ml" / "a" / "model").exists()
    with pytest.raises(ValueError, match="copy.*link"):
        place(folder, tmp_path / "c", "move")


def test_a_written_training_layout_reads_back_as_written(tmp_path):
    source = tmp_path / "data.jsonl"
    source.write_text("{}\n")
    root = write_training_layout(tmp_path / "ml", {"dataset": source}, {"batch_size": 8, "dtype": "float32"})
    env = TrainingJobEnvironment.from_root(root, env={})
    assert env.hyperparameters == {"batch_size": 8, "dtype": "float32"}
    assert (env.channel("dataset") / "data.jsonl").is_file()
    assert env.checkpoint_dir == MlPaths(root).checkpoints and env.model_dir.is_dir()
    assert (env.current_host, env.hosts) == ("algo-1", ("algo-1",))


def test_a_written_processing_layout_reads_back_as_written(tmp_path):
    source = tmp_path / "adapter"
    source.mkdir()
    (source / "adapter_config.json").write_text("{}")
    root = write_processing_layout(tmp_path / "ml", {"peft_checkpoint": source}, arguments=["--seed", "3"])
    env = ProcessingJobEnvironment.from_root(root)
    assert env.input("peft_checkpoint") == MlPaths(root).processing_input("peft_checkpoint")
    assert env.output("report").is_dir()
    request = json.loads(MlPaths(root).processing_job_config.read_text())
    assert request["AppSpecification"]["ContainerArguments"] == ["--seed", "3"]
    local_path = request["ProcessingInputs"][0]["S3Input"]["LocalPath"]
    assert (
        local_path
        == str(CONTAINER.processing_input("peft_checkpoint"))
        == "/opt/ml/processing/input/peft_checkpoint"
    )


def test_unchecked_hyperparameters_are_written_as_given(tmp_path):
    """The layout writes what a test gives it, so a job can be shown rejecting bad settings."""
    root = write_training_layout(tmp_path / "ml", {}, {"batch_size": 10, "mini_batch_size": 4, "nope": "x"})
    sent = json.loads(MlPaths(root).hyperparameters.read_text())
    assert sent == {"batch_size": "10", "mini_batch_size": "4", "nope": '"x"'}


def test_a_processing_job_of_several_instances_lists_their_hosts(tmp_path):
    paths = MlPaths(tmp_path)
    write_processing_config(paths, "job", {}, {"report": ""}, instance_count=3, current_host="algo-2")
    env = ProcessingJobEnvironment.from_root(tmp_path)
    assert (env.current_host, env.hosts, env.host_index) == ("algo-2", ("algo-1", "algo-2", "algo-3"), 1)
    request = json.loads(paths.processing_job_config.read_text())
    assert request["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 3
    assert request["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["LocalPath"] == (
        "/opt/ml/processing/output/report"
    )
