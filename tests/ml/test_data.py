import json
import math

import pandas as pd
import pytest

from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.contract.settings import TrainConfig
from flan_t5_detox.fixtures import SAMPLE_DATASET
from flan_t5_detox.ml import data


def _records(n):
    return [
        {"id": str(i), "dialogue": "x" * (150 + 10 * i), "summary": f"s{i}", "topic": "t"} for i in range(n)
    ]


def test_filter_prompt_and_unshuffled_80_20_split():
    splits = data.prepare_splits(_records(100), 200, 1000, 0.2)
    kept = [r for r in _records(100) if 200 < len(r["dialogue"]) <= 1000]
    assert len(splits.train) + len(splits.test) == len(kept)
    assert len(splits.test) == math.ceil(len(kept) * 0.2)
    assert [e.id for e in splits.train + splits.test] == [r["id"] for r in kept]  # order kept
    assert splits.train[0].prompt.startswith("Summarize the following conversation.")
    assert splits.train[0].prompt.rstrip().endswith("Summary:")


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_channel_formats(tmp_path, suffix):
    frame = pd.DataFrame(_records(5))
    path = tmp_path / f"d.{suffix}"
    if suffix == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in _records(5)))
    elif suffix == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    assert [r["dialogue"] for r in data.read_records(tmp_path)] == [r["dialogue"] for r in _records(5)]


def test_bad_datasets_are_clear_errors(tmp_path):
    with pytest.raises(JobInputError, match="no dataset files"):
        data.read_records(tmp_path)
    (tmp_path / "d.jsonl").write_text('{"text": "no dialogue column"}\n')
    with pytest.raises(JobInputError, match="lacks column"):
        data.read_records(tmp_path)
    good = json.dumps({"id": "1", "dialogue": "x", "summary": "y"})
    (tmp_path / "d.jsonl").write_text(f"{good}\n\n{{broken\n")
    with pytest.raises(JobInputError) as caught:
        data.read_records(tmp_path)
    assert str(caught.value).startswith(f"dataset file {tmp_path / 'd.jsonl'}, line 3: not JSON")
    assert str(caught.value).count("dataset file") == 1  # the reason once, not wrapped in itself
    (tmp_path / "d.jsonl").write_text(f'{good}\n["a", "list"]\n')
    with pytest.raises(JobInputError, match=r"line 2: a JSON list, expected an object with the DialogSum"):
        data.read_records(tmp_path)
    with pytest.raises(JobInputError, match="only 0 dialogue"):
        data.prepare_splits(_records(3), 200, 1000, 0.2)


def test_batch_order_is_reproducible_and_covers_each_pass():
    order = data.BatchOrder(size=10, batch_size=3, seed=5)
    first_pass = sum((order.batch(p) for p in range(3)), [])
    assert len(set(first_pass)) == 9
    assert order.batch(4) == data.BatchOrder(10, 3, 5).batch(4)
    assert order.batch(0) != order.batch(3)  # a new permutation per pass
    with pytest.raises(JobInputError, match="fewer than batch_size"):
        data.BatchOrder(size=2, batch_size=3, seed=0)


def test_sample_dataset_has_enough_usable_dialogues():
    splits = data.prepare_splits(data.read_records(SAMPLE_DATASET), 200, 1000, 0.2)
    assert len(splits.train) >= 100 and len(splits.test) >= 25


def test_held_out_prompts_are_the_end_of_the_training_split_never_the_test_split():
    config = TrainConfig(eval_samples=64, batch_size=8)
    prompts = data.training_prompts(SAMPLE_DATASET, config)
    splits = data.load_splits(SAMPLE_DATASET, config)
    assert prompts.train + prompts.validation == splits.train
    assert len(prompts.validation) == 64 and prompts.validation == splits.train[-64:]
    assert not {e.id for e in prompts.validation} & {e.id for e in splits.test}
    assert data.training_prompts(SAMPLE_DATASET, TrainConfig(batch_size=8)).validation == []
    with pytest.raises(JobInputError, match="would hold out the whole training split"):
        data.training_prompts(SAMPLE_DATASET, TrainConfig(eval_samples=len(splits.train), batch_size=8))
