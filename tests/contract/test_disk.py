"""A full disk at a write, and the disk preflight, on a real size-limited file system (a tmpfs;
CI runs as root and mounts it, elsewhere these tests are skipped without root)."""

import errno
import json
import logging

import numpy as np
import pytest
from safetensors.numpy import save_file

from flan_t5_detox.contract import disk
from flan_t5_detox.contract.metrics import MetricsLog
from flan_t5_detox.contract.settings import TrainConfig
from tests.filesystems import fill, size_limited


def test_a_full_disk_becomes_a_failure_naming_what_where_the_free_space_and_the_fix(tmp_path):
    with size_limited(tmp_path / "volume", "64k") as volume:
        target = volume / "big.bin"
        with pytest.raises(disk.DiskFull) as caught:
            with disk.writing("the big file", target, "raise the volume"):
                try:
                    target.write_bytes(b"x" * 200_000)
                except OSError:
                    target.unlink(missing_ok=True)  # the writer's own cleanup runs first
                    raise
        message = str(caught.value)
        assert "No space left on device: cannot write the big file to" in message and str(target) in message
        assert "64.0 kB free there" in message and message.endswith("raise the volume")
        assert caught.value.prefix == "Disk full" and caught.value.__cause__.errno == errno.ENOSPC
        assert list(volume.iterdir()) == []


def test_other_errors_pass_as_they_are(tmp_path):
    with pytest.raises(FileNotFoundError):
        with disk.writing("a file", tmp_path / "missing" / "x"):
            (tmp_path / "missing" / "x").write_text("x")


def test_metrics_on_a_full_disk_fail_clearly_and_a_rewrite_leaves_no_temporary(tmp_path):
    with size_limited(tmp_path / "data", "64k") as volume:
        metrics = MetricsLog(volume / "metrics.jsonl")
        metrics.append({"step": 1, "reward_mean": 0.5})
        fill(volume)
        with pytest.raises(disk.DiskFull, match="the metrics of step 2 to .*metrics.jsonl"):
            metrics.append({"step": 2, "reward_mean": 0.5, "padding": "x" * 8192})
        with pytest.raises(disk.DiskFull, match="the metrics of steps 1..40"):
            metrics.rewrite([{"step": i, "padding": "x" * 2048} for i in range(1, 41)])
        assert sorted(p.name for p in volume.iterdir()) == ["ballast", "metrics.jsonl"]
        assert metrics.read()[0]["step"] == 1  # what was complete is still there


def test_parameters_are_counted_from_safetensors_headers_or_bin_sizes(tmp_path):
    save_file(
        {"a": np.zeros((3, 4), np.float32), "b": np.zeros(5, np.float16)}, tmp_path / "model.safetensors"
    )
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0" * 400)  # ignored: safetensors come first
    assert disk.parameter_count(tmp_path) == 17
    (tmp_path / "model.safetensors").unlink()
    assert disk.parameter_count(tmp_path) == 100
    assert disk.parameter_count(tmp_path / "nothing") is None


def _adapter(folder, parameters: int):
    folder.mkdir(parents=True)
    (folder / "adapter_model.bin").write_bytes(b"\0" * 4 * parameters)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
    return folder


def test_the_preflight_refuses_a_run_the_volume_cannot_hold_and_warns_when_close(tmp_path, caplog):
    adapter = _adapter(tmp_path / "adapter", 80_000)  # a checkpoint: 3 x 320 kB, a kept adapter 640 kB
    with size_limited(tmp_path / "ml", "2m") as ml:
        folders = dict(checkpoint_dir=ml / "checkpoints", model_dir=ml / "model", output_data_dir=ml / "out")
        config = TrainConfig(max_ppo_steps=4, save_adapter_every=1)
        need = disk.training_need(config, adapter, tmp_path / "base", keep=2, **folders)
        assert "4 kept adapter(s)" in need.detail[ml / "checkpoints"]
        with pytest.raises(
            disk.DiskFull, match=r"will write about [\d.]+ MB .* 2\.0 MB free: raise the job's volume"
        ):
            disk.check_room(need, disk.TRAIN_FIX)
        with caplog.at_level(logging.WARNING):
            disk.check_room(need, disk.TRAIN_FIX, refuse=False)
        assert "preflight=warn: running anyway" in caplog.text

        caplog.clear()
        config = TrainConfig(max_ppo_steps=4, checkpoint_every=0)  # one checkpoint, at the end
        need = disk.training_need(config, adapter, tmp_path / "base", keep=2, **folders)
        with caplog.at_level(logging.WARNING):
            disk.check_room(need, disk.TRAIN_FIX)
        assert "close to full" in caplog.text  # about 1.7 MB of 2 MB
        with pytest.raises(disk.DiskFull, match="the report in .*report: 8.0 MB"):
            disk.check_room(disk.evaluation_need(0, 0, 1, ml / "report"), disk.EVALUATE_FIX)
    assert disk.training_need(config, tmp_path / "no-adapter", tmp_path, keep=2, **folders) is None


def test_the_training_summary_on_a_full_disk_fails_clearly_and_leaves_no_temporary(tmp_path):
    from flan_t5_detox.contract.summary import TrainingSummary

    summary = TrainingSummary.from_history(
        [{"step": 1, "reward_mean": 0.1}], steps=1, seconds_this_run=1.0, settings={"note": "x" * 100_000},
        world_size=1, adapter={}, dtype="float32", threads=1, cpu="cpu", versions={},
    )  # fmt: skip
    with size_limited(tmp_path / "data", "64k") as volume:
        with pytest.raises(
            disk.DiskFull, match="cannot write the training summary to .*training_summary.json"
        ):
            summary.write(volume)
        assert list(volume.iterdir()) == []
