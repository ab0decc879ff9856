"""Model folders are untrusted: no code runs from a weights file, and every bad one gets a reason."""

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.ml import loading
from tests.helpers import as_bin, plant_payload


def _copy(source, dest):
    shutil.copytree(source, dest)
    return dest


def test_a_payload_in_the_base_model_never_runs_and_is_refused_with_a_reason(tiny_models, tmp_path):
    folder = _copy(tiny_models.base_model, tmp_path / "base")
    marker = tmp_path / "ran"
    plant_payload(folder, marker)
    with pytest.raises(JobInputError) as caught:
        loading.load_seq2seq(folder)
    message = str(caught.value)
    assert "objects other than tensors" in message and str(folder / "pytorch_model.bin") in message
    assert "weights_only" not in message  # never the advice to turn safe loading off
    assert not marker.exists()


def test_a_payload_in_the_reward_model_never_runs(tiny_models, tmp_path):
    folder = _copy(tiny_models.reward_model, tmp_path / "reward")
    marker = tmp_path / "ran"
    plant_payload(folder, marker)
    with pytest.raises(JobInputError, match="reward model's weights file .* objects other than tensors"):
        loading.load_classifier(folder)
    assert not marker.exists()


def test_safetensors_are_preferred_to_a_bin_beside_them(tiny_models, tmp_path):
    folder = _copy(tiny_models.base_model, tmp_path / "base")
    marker = tmp_path / "ran"
    state = plant_payload(folder, marker)
    save_file({k: v.clone() for k, v in state.items()}, str(folder / "model.safetensors"), {"format": "pt"})
    model = loading.load_seq2seq(folder)
    assert not marker.exists()
    reference = loading.load_seq2seq(tiny_models.base_model)
    for (name, got), (_, want) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(got, want), name


def test_a_sharded_bin_loads_through_its_index(tiny_models, tmp_path):
    folder = _copy(tiny_models.reward_model, tmp_path / "reward")
    state = as_bin(folder)
    (folder / "pytorch_model.bin").unlink()
    names = sorted(state)
    halves = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
    weight_map = {}
    for shard, keys in halves.items():
        torch.save({k: state[k] for k in keys}, folder / shard)
        weight_map.update(dict.fromkeys(keys, shard))
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    model = loading.load_classifier(folder)
    assert torch.equal(model.state_dict()[names[0]], state[names[0]])


@pytest.mark.parametrize("form", ["safetensors", "bin"])
@pytest.mark.parametrize(
    "damage",
    [lambda b: b[: len(b) // 2], lambda b: bytes(range(256)) * 64],
    ids=["truncated", "random bytes"],
)
def test_a_damaged_weights_file_is_named_with_a_fix_never_raw_text(tiny_models, tmp_path, damage, form):
    folder = _copy(tiny_models.base_model, tmp_path / "base")
    if form == "bin":
        as_bin(folder)
    [weights] = loading.weight_files(folder)
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(JobInputError) as caught:
        loading.load_seq2seq(folder)
    message = str(caught.value)
    assert f"{weights} is damaged or not a weights file" in message and "replace it" in message
    assert "weights_only" not in message and "Errno" not in message


def test_missing_weights_and_weights_that_do_not_fit_their_config(tiny_models, tmp_path):
    folder = _copy(tiny_models.base_model, tmp_path / "base")
    state = as_bin(folder)
    weights = folder / "pytorch_model.bin"
    weights.unlink()
    with pytest.raises(
        JobInputError, match="holds no weights: expected model.safetensors or pytorch_model.bin"
    ):
        loading.load_seq2seq(folder)
    dropped = sorted(k for k in state if "block.1" in k)[0]
    torch.save({k: v for k, v in state.items() if k != dropped}, weights)
    with pytest.raises(JobInputError, match="do not fit its config.json: 1 tensor"):
        loading.load_seq2seq(folder)
