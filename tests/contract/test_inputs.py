import io
import tarfile

import pytest

from flan_t5_detox.contract.environment import ProcessingJobEnvironment, TrainingJobEnvironment
from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.contract.inputs import (
    evaluation_inputs,
    model_source,
    named_as_given,
    peft_checkpoint_dir,
    training_inputs,
)
from flan_t5_detox.contract.layout import write_processing_layout, write_training_layout
from flan_t5_detox.contract.settings import EvalConfig, TrainConfig


def _folder(path, name="adapter_config.json"):
    path.mkdir(parents=True)
    (path / name).write_text("{}")
    return path


def _model_tarball(path):
    data = b"{}"
    info = tarfile.TarInfo("adapter_config.json")
    info.size = len(data)
    with tarfile.open(path, "w:gz") as archive:
        archive.addfile(info, io.BytesIO(data))
    return path


def test_a_channel_wins_over_the_hub_name_and_none_at_all_is_an_error(tmp_path):
    assert model_source(tmp_path, "google/flan-t5-base", "base model") == str(tmp_path)
    assert model_source(None, "google/flan-t5-base", "base model") == "google/flan-t5-base"
    with pytest.raises(JobInputError, match="no reward model: provide the channel or its hub name"):
        model_source(None, "", "reward model")
    assert peft_checkpoint_dir(tmp_path, "s3://ignored/") == tmp_path
    with pytest.raises(JobInputError, match="'peft_checkpoint' channel or the 'peft_checkpoint_s3_uri'"):
        peft_checkpoint_dir(None, "")


def test_training_inputs_record_where_each_model_came_from(tmp_path):
    channels = {
        "base_model": _folder(tmp_path / "base", "config.json"),
        "peft_checkpoint": _folder(tmp_path / "p"),
    }
    root = write_training_layout(tmp_path / "ml", channels, {})
    env = TrainingJobEnvironment.from_root(root, env={})
    inputs = training_inputs(env, TrainConfig())
    assert inputs.base_model == str(env.channel("base_model"))
    assert inputs.reward_model == TrainConfig().reward_model_name and inputs.dataset is None
    assert inputs.provenance == {
        "base_model": "channel:base_model",
        "summarization_adapter": "channel:peft_checkpoint",
        "reward_model": TrainConfig().reward_model_name,
    }


def test_evaluation_inputs_unpack_a_tarball_and_keep_the_path_given(tmp_path):
    given = {
        "peft_checkpoint": _folder(tmp_path / "before"),
        "detoxified": _model_tarball(tmp_path / "model.tar.gz"),
    }
    env = ProcessingJobEnvironment.from_root(write_processing_layout(tmp_path / "ml", given))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    inputs = evaluation_inputs(env, EvalConfig(), scratch)
    assert inputs.before_adapter == env.input("peft_checkpoint")  # a folder: used as it is
    assert inputs.after_adapter.parent == scratch  # a tarball: unpacked
    assert inputs.as_given == {
        "before_adapter": env.input("peft_checkpoint"),
        "after_adapter": env.input("detoxified"),
    }
    assert inputs.training_output is None and inputs.base_model == EvalConfig().base_model_name

    with (
        pytest.raises(
            JobInputError, match=r"detoxified \(unpacked\)/adapter_config.json is damaged"
        ) as caught,
        named_as_given(inputs),
    ):
        raise JobInputError(f"{inputs.after_adapter / 'adapter_config.json'} is damaged")
    assert str(scratch) not in str(caught.value) and str(env.input("detoxified")) in str(caught.value)
    with pytest.raises(JobInputError, match="^unrelated$"), named_as_given(inputs):
        raise JobInputError("unrelated")


def test_a_missing_evaluation_input_says_where_it_was_expected(tmp_path):
    env = ProcessingJobEnvironment.from_root(write_processing_layout(tmp_path / "ml", {}))
    with pytest.raises(
        JobInputError, match=r"missing input 'peft_checkpoint' .* under .*processing/input/peft"
    ):
        evaluation_inputs(env, EvalConfig(), tmp_path)
