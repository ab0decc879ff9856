"""Checkpoints (`checkpoint`): atomic and pruned, a snapshot's every field back from its bytes,
RNG states restored, unusable ones skipped with a warning, and none usable is the user's call."""

import dataclasses
import io
import json
import logging
import random
import shutil

import numpy as np
import pytest
import torch

from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.ml import checkpoint
from tests.helpers import Payload, tiny_config, tiny_trainer


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    model.bias.requires_grad_(False)  # frozen: not part of a snapshot
    optimizer = torch.optim.Adam([model.weight], lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


def _snapshot(step: int = 2) -> checkpoint.Snapshot:
    model, optimizer = _model_and_optimizer()
    history = [{"step": s, "reward_mean": 0.5 + s, "kl": None} for s in range(1, step + 1)]
    return checkpoint.take_snapshot(step, 0.2, model, optimizer, np.random.RandomState(3), history)


def test_checkpoints_are_atomic_and_pruned(tiny_models, tmp_path):
    trainer = tiny_trainer(tiny_models, tiny_config())
    for step in (1, 2, 3):
        trainer.last_good.step = step
        checkpoint.write(tmp_path, trainer.last_good, keep=2)
    (tmp_path / ".tmp-leftover").mkdir()  # a crash mid-write leaves only a temporary
    (tmp_path / "step-000009").mkdir()  # and a damaged folder is skipped
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-000002", "step-000003", "step-000009"]
    assert checkpoint.latest(tmp_path).step == 3


def test_a_snapshot_comes_back_whole_from_its_bytes():
    snap = _snapshot()
    assert list(snap.trainable) == ["weight"]
    back = checkpoint.from_bytes(checkpoint.to_bytes(snap))
    assert (back.step, back.kl_coef, back.history) == (2, 0.2, snap.history)
    assert torch.equal(back.trainable["weight"], snap.trainable["weight"])
    state, saved = back.optimizer["state"][0], snap.optimizer["state"][0]
    assert all(torch.equal(state[k], saved[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    # JSON gives tuples (Adam's betas) back as lists, which the optimizer takes alike.
    assert back.optimizer["param_groups"] == json.loads(json.dumps(snap.optimizer["param_groups"]))
    assert torch.equal(back.rng["torch"], snap.rng["torch"])


def test_restore_replays_every_random_stream_and_the_weights(tmp_path):
    lengths = np.random.RandomState(9)
    model, optimizer = _model_and_optimizer()
    snap = checkpoint.take_snapshot(1, 0.1, model, optimizer, lengths, [])
    checkpoint.write(tmp_path, snap)

    def draws():
        return (
            torch.rand(3).tolist(),
            np.random.rand(3).tolist(),
            random.random(),
            lengths.randint(0, 100, 3).tolist(),
        )

    expected = draws()
    with torch.no_grad():
        model.weight.add_(1.0)
    checkpoint.restore(checkpoint.latest(tmp_path), model, optimizer, lengths)
    assert draws() == expected
    assert torch.equal(model.weight, snap.trainable["weight"])


def test_a_checkpoint_for_another_model_is_refused():
    snap = _snapshot()
    other = torch.nn.Linear(3, 2)
    snap.trainable = {"encoder.weight": snap.trainable["weight"]}
    with pytest.raises(ValueError, match="unknown parameters"):
        checkpoint.restore(snap, other, torch.optim.Adam(other.parameters()), np.random.RandomState(0))


def test_unusable_checkpoints_are_skipped_with_a_warning_and_none_usable_fails(tmp_path, caplog):
    good = checkpoint.write(tmp_path, _snapshot(1))
    damaged = checkpoint.write(tmp_path, _snapshot(2), keep=3)
    (damaged / checkpoint.STATE_FILE).write_bytes(b"not a torch file")
    hostile = tmp_path / "step-000003"
    hostile.mkdir()
    torch.save(
        {"meta": "{}", "tensors": {}, "extra": Payload(tmp_path / "ran")}, hostile / checkpoint.STATE_FILE
    )
    with caplog.at_level(logging.WARNING):
        assert checkpoint.latest(tmp_path).step == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("step-000003" in w and "could run code" in w for w in warnings)
    assert any("step-000002" in w and "damaged" in w for w in warnings)
    assert not (tmp_path / "ran").exists()

    shutil.rmtree(good)
    with pytest.raises(JobInputError, match="no checkpoint in .* can be used .*step-000002.*Delete them"):
        checkpoint.latest(tmp_path)
    assert checkpoint.latest(tmp_path / "none") is None


def test_a_readable_file_of_another_layout_is_not_a_checkpoint_of_this_job(tmp_path):
    folder = tmp_path / "step-000001"
    folder.mkdir()
    torch.save({"meta": '{"__dict__": [["step", 1]]}', "tensors": {}}, folder / checkpoint.STATE_FILE)
    with pytest.raises(checkpoint.UnusableCheckpoint, match="not a checkpoint of this job"):
        checkpoint.read(folder)
    with pytest.raises(checkpoint.UnusableCheckpoint, match="no state.pt"):
        checkpoint.read(tmp_path)


def test_a_checkpoint_carries_the_runs_settings_held_out_start_and_best_step(tmp_path):
    snap = dataclasses.replace(
        _snapshot(3),
        settings={"batch_size": 8, "seed": 42},
        heldout_start={"heldout_toxicity": 0.2, "heldout_rouge_l": 0.75},
        best_step=2,
        best_trainable={"weight": torch.full((2, 3), 2.0)},
    )
    folder = checkpoint.write(tmp_path, snap)
    back = checkpoint.latest(tmp_path)
    assert (back.settings, back.heldout_start, back.best_step) == (snap.settings, snap.heldout_start, 2)
    assert torch.equal(back.best_trainable["weight"], torch.full((2, 3), 2.0))
    # The settings are also readable on their own, before anything heavy is loaded; the newest
    # checkpoint's, even when its state.pt is damaged.
    assert json.loads((folder / checkpoint.SETTINGS_FILE).read_text()) == snap.settings
    newer = checkpoint.write(tmp_path, dataclasses.replace(snap, step=4))
    (newer / checkpoint.STATE_FILE).write_bytes(b"damaged")
    assert checkpoint.recorded_settings(tmp_path) == (newer, snap.settings)
    assert checkpoint.recorded_settings(tmp_path / "none") is None


def test_a_checkpoint_from_before_settings_were_recorded_still_loads(tmp_path):
    """Its state.pt lacks the fields added since (written here by dropping them from a new one)."""
    snap = _snapshot(2)
    saved = torch.load(io.BytesIO(checkpoint.to_bytes(snap)), weights_only=True)
    added = ("settings", "heldout_start", "best_step", "best_trainable")
    meta = {"__dict__": [pair for pair in json.loads(saved["meta"])["__dict__"] if pair[0] not in added]}
    folder = tmp_path / "step-000002"
    folder.mkdir()
    torch.save({"meta": json.dumps(meta), "tensors": saved["tensors"]}, folder / checkpoint.STATE_FILE)
    back = checkpoint.latest(tmp_path)
    assert (back.step, back.history, back.settings, back.best_step) == (2, snap.history, {}, 0)
    assert checkpoint.recorded_settings(tmp_path) is None  # a resume cannot check: it continues
