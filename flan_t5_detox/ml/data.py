"""DialogSum-format data: reading, filtering, prompting, splitting, batch order.

Schema: `id, dialogue, summary, topic` (only `dialogue` is required for
training; `summary` is needed for ROUGE in the evaluation). A dataset
channel holds JSONL, JSON-lines `.json`, CSV or Parquet files; without a
channel the hub dataset's `train` split is loaded by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.contract.settings import EvalConfig, TrainConfig

PROMPT_HEAD = "Summarize the following conversation."
PROMPT_TAIL = "Summary:"
_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass
class Example:
    id: str
    dialogue: str
    summary: str
    prompt: str


@dataclass
class Splits:
    train: list[Example]
    test: list[Example]


def make_prompt(dialogue: str) -> str:
    return f"{PROMPT_HEAD}\n\n{dialogue}\n\n{PROMPT_TAIL}\n"


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise JobInputError(f"dataset file {path}, line {number}: not JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise JobInputError(
                f"dataset file {path}, line {number}: a JSON {type(record).__name__}, expected an object "
                "with the DialogSum fields (id, dialogue, summary, topic)"
            )
        records.append(record)
    return records


def _read_file(path: Path) -> list[dict]:
    import pandas as pd  # pandas is heavy; only the job side reads data

    if path.suffix not in (".parquet", ".csv"):
        try:
            return _read_jsonl(path)
        except UnicodeDecodeError as exc:
            raise JobInputError(f"dataset file {path} is not UTF-8 text") from exc
    try:
        frame = (
            pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, keep_default_na=False)
        )
    except Exception as exc:  # noqa: BLE001 - any parse error is a bad-input error
        raise JobInputError(f"cannot read dataset file {path}: {exc}") from exc
    return frame.to_dict(orient="records")


def read_records(source: Path) -> list[dict]:
    """Read every data file in a folder (sorted, so the order is stable) or one file."""
    source = Path(source)
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.suffix in _SUFFIXES)
    if not files:
        raise JobInputError(f"no dataset files ({', '.join(_SUFFIXES)}) found in {source}")
    records: list[dict] = []
    for path in files:
        records.extend(_read_file(path))
    if not records:
        raise JobInputError(f"dataset at {source} is empty")
    missing = [name for name in ("dialogue",) if name not in records[0]]
    if missing:
        raise JobInputError(
            f"dataset at {source} lacks column(s) {missing}; "
            "expected the DialogSum schema: id, dialogue, summary, topic"
        )
    return records


def load_records(channel: Path | None, dataset_name: str, split: str = "train") -> list[dict]:
    """From the channel when given, else the hub dataset by name (needs network)."""
    if channel is not None:
        return read_records(channel)
    from datasets import load_dataset

    return [dict(row) for row in load_dataset(dataset_name, split=split)]


def prepare_splits(records: list[dict], min_length: int, max_length: int, test_size: float) -> Splits:
    """The notebook's filter (min < len <= max characters), prompt, and 80/20 unshuffled split."""
    kept = [
        Example(
            id=str(r.get("id", i)),
            dialogue=str(r["dialogue"]),
            summary=str(r.get("summary", "")),
            prompt=make_prompt(str(r["dialogue"])),
        )
        for i, r in enumerate(records)
        if isinstance(r.get("dialogue"), str) and min_length < len(r["dialogue"]) <= max_length
    ]
    if len(kept) < 2:
        raise JobInputError(
            f"only {len(kept)} dialogue(s) have {min_length} < length <= {max_length} characters; "
            "widen input_min_text_length/input_max_text_length or supply more data"
        )
    n_test = int(np.ceil(len(kept) * test_size))  # as datasets.train_test_split rounds the test side
    n_train = len(kept) - n_test
    return Splits(train=kept[:n_train], test=kept[n_train:])


class BatchOrder:
    """A reproducible stream of batches: a seeded permutation per pass over the data.

    Position is (number of batches served); resuming at the same position gives
    the same remaining batches.
    """

    def __init__(self, size: int, batch_size: int, seed: int):
        if size < batch_size:
            raise JobInputError(
                f"the training split has {size} prompts, fewer than batch_size={batch_size}; "
                "lower batch_size or supply more data"
            )
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.batches_per_pass = size // batch_size  # drop the ragged end, like trl's dataloader

    def batch(self, position: int) -> list[int]:
        epoch, index = divmod(position, self.batches_per_pass)
        order = np.random.RandomState(self.seed + epoch).permutation(self.size)
        return order[index * self.batch_size : (index + 1) * self.batch_size].tolist()


def load_splits(channel: Path | None, settings: TrainConfig | EvalConfig) -> Splits:
    """The dataset of a job's settings (TrainConfig or EvalConfig), filtered, prompted and split."""
    records = load_records(channel, settings.dataset_name)
    return prepare_splits(
        records, settings.input_min_text_length, settings.input_max_text_length, settings.test_size
    )


@dataclass
class TrainingPrompts:
    train: list[Example]  # what PPO trains on
    validation: list[Example]  # held out of training for the held-out evaluation (`eval_samples`)


def training_prompts(channel: Path | None, config: TrainConfig) -> TrainingPrompts:
    """The training split, its last `config.eval_samples` prompts held out as the validation part
    (the evaluate job's test split is never touched), the rest checked to hold at least one batch
    of `config.batch_size`."""
    split = load_splits(channel, config).train
    held = config.eval_samples
    if held and held >= len(split):
        raise JobInputError(
            f"eval_samples={held} would hold out the whole training split of {len(split)} prompts; "
            "lower eval_samples or supply more data"
        )
    prompts = TrainingPrompts(split[: len(split) - held], split[len(split) - held :])
    BatchOrder(len(prompts.train), config.batch_size, config.seed)
    return prompts
