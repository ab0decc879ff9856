"""Loading pretrained models and tokenizers from a folder (a channel) or a hub name.

Model folders are untrusted input: channels come from S3 prefixes that other people and
processes can write to. No code runs from a weights file here. transformers 4.27 unpickles
`pytorch_model.bin` with plain `torch.load`, so the weights are read by this module instead:
safetensors when the folder has them, else the `.bin` with `torch.load(weights_only=True)`,
and handed to the model that `config.json` describes. A file that cannot be read that way is
refused with a reason.

Every failure is a `JobInputError` naming what could not be loaded, so the job reports it as
bad input."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import BinaryIO

import torch
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, AutoTokenizer

from flan_t5_detox.contract.failure import JobInputError

# Weight files in order of preference, each alone or sharded (with an index naming the shards).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HUB_FILES = ["*.json", "*.model", "*.txt"]  # configs, tokenizer files, merges
REFUSED = "Unsupported class"  # what torch.load(weights_only=True) says of a non-tensor object


def load_tokenizer(path_or_name: str | Path, what: str = "base model"):
    try:
        return AutoTokenizer.from_pretrained(str(path_or_name))
    except (OSError, ValueError) as exc:
        raise JobInputError(f"cannot load the {what}'s tokenizer from {path_or_name}: {exc}") from exc


def weight_files(folder: Path) -> list[Path]:
    """The files holding a model folder's weights, the preferred format first found."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
        index = folder / f"{name}.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise JobInputError(f"{index} is not a weights index (JSON with a weight_map)") from exc
            return [folder / shard for shard in shards]
    return []


def read_weights(folder: Path, what: str) -> dict[str, torch.Tensor]:
    """Every tensor of the model in `folder`, read without unpickling arbitrary objects."""
    files = weight_files(folder)
    if not files:
        raise JobInputError(
            f"the {what} folder {folder} holds no weights: expected {' or '.join(WEIGHT_FILES)} "
            "(or their sharded form with an .index.json)"
        )
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(read_weight_file(path, what))
    return state


class UnsafeFile(Exception):
    """`torch.load(weights_only=True)` refused an object other than tensors: it was not loaded."""


class DamagedFile(Exception):
    """Not a readable torch file: truncated, overwritten, or something else entirely."""


def load_tensors(source: Path | BinaryIO) -> object:
    """`torch.load` that never runs code from the file or stream (the one rule weights, adapters
    and checkpoints are read by); raises `UnsafeFile` or `DamagedFile` (with the cause chained)."""
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if REFUSED in str(exc):
            raise UnsafeFile() from exc
        raise DamagedFile("not a torch file") from exc  # bytes that are not a pickle at all
    except Exception as exc:  # noqa: BLE001 - truncated, random bytes, a wrong format
        raise DamagedFile(type(exc).__name__) from exc


def read_weight_file(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise JobInputError(f"the {what}'s weights index names {path.name}, missing from {path.parent}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            try:
                state = load_file(str(path))
            except Exception as exc:  # noqa: BLE001 - truncated or not safetensors
                raise DamagedFile(type(exc).__name__) from exc
        else:
            state = load_tensors(path)
    except UnsafeFile as exc:
        # torch's own text suggests turning the safe loading off; never pass that on.
        raise JobInputError(
            f"the {what}'s weights file {path} holds objects other than tensors, so it was not loaded "
            "(unpickling them could run code from the file). Save the model with "
            "save_pretrained(..., safe_serialization=True), or its state dict of tensors alone"
        ) from exc
    except DamagedFile as exc:
        raise JobInputError(
            f"the {what}'s weights file {path} is damaged or not a weights file ({exc}); "
            "replace it with a complete copy"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise JobInputError(f"the {what}'s weights file {path} is not a state dict (names to tensors)")
    return state


def model_folder(path_or_name: str | Path, what: str) -> Path:
    """A local model folder as given, or the hub model's files fetched into the hub cache, the
    safetensors weights if the model has them, else the `.bin` ones."""
    if Path(path_or_name).is_dir():
        return Path(path_or_name)
    from huggingface_hub import snapshot_download

    name = str(path_or_name)
    try:
        folder = Path(snapshot_download(name, allow_patterns=HUB_FILES + ["model.safetensors*"]))
        if not weight_files(folder):
            folder = Path(snapshot_download(name, allow_patterns=HUB_FILES + ["pytorch_model.bin*"]))
    except Exception as exc:  # noqa: BLE001 - offline, unknown name, no access
        raise JobInputError(
            f"cannot load the {what} {name!r}: it is not a folder and the hub gave: {exc}. "
            f"Supply the {what} as a channel"
        ) from exc
    return folder


def _load(auto_class, path_or_name: str | Path, what: str, **kwargs):
    folder = model_folder(path_or_name, what)
    try:
        config = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise JobInputError(f"cannot read the {what}'s config.json in {folder}: {exc}") from exc
    state = read_weights(folder, what)
    try:
        model, info = auto_class.from_pretrained(
            None, config=config, state_dict=state, output_loading_info=True, **kwargs
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise JobInputError(f"the {what}'s weights in {folder} do not fit its config.json: {exc}") from exc
    problems = info["missing_keys"] + info["mismatched_keys"] + info["error_msgs"]
    if problems:
        raise JobInputError(
            f"the {what}'s weights in {folder} do not fit its config.json: "
            f"{len(problems)} tensor(s) missing or of the wrong shape, e.g. {problems[0]}"
        )
    return model


def load_seq2seq(path_or_name: str | Path, dtype: torch.dtype = torch.float32):
    return _load(AutoModelForSeq2SeqLM, path_or_name, "base model", torch_dtype=dtype)


def load_classifier(path_or_name: str | Path, what: str = "reward model"):
    return _load(AutoModelForSequenceClassification, path_or_name, what)
