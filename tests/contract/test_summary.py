import json

import pytest

from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.contract.paths import TRAINING_SUMMARY
from flan_t5_detox.contract.summary import KL_REFERENCE, TrainingSummary


def summary_of(steps: int = 3, history=None) -> TrainingSummary:
    history = (
        [{"step": s, "reward_mean": 0.1 * s} for s in range(1, steps + 1)] if history is None else history
    )
    return TrainingSummary.from_history(
        history,
        steps=steps,
        seconds_this_run=1.5,
        settings={"batch_size": 8},
        world_size=1,
        adapter={"ppo_steps": steps},
        dtype="float32",
        threads=1,
        cpu="a CPU",
        versions={"torch": "1.13.1"},
    )


def test_the_reward_figures_come_from_the_history():
    summary = summary_of(steps=3)
    assert summary.status == "completed" and summary.final == {"step": 3, "reward_mean": 0.30000000000000004}
    assert summary.reward_mean_first == 0.1 and summary.reward_mean_last == summary.final["reward_mean"]
    assert summary.kl_reference == KL_REFERENCE
    empty = summary_of(steps=0, history=[])
    assert empty.final is None and empty.reward_mean_first is None and empty.reward_mean_last is None


def test_written_and_read_back_the_same_and_flat_json(tmp_path):
    summary = summary_of()
    path = summary.write(tmp_path)
    assert path == tmp_path / TRAINING_SUMMARY
    data = json.loads(path.read_text())
    assert data["steps"] == 3 and data["dtype"] == "float32" and data["versions"]["torch"] == "1.13.1"
    assert TrainingSummary.read(tmp_path) == summary
    assert TrainingSummary.read(tmp_path / "elsewhere") is None


def test_a_summary_missing_fields_is_the_inputs_fault(tmp_path):
    (tmp_path / TRAINING_SUMMARY).write_text(json.dumps({"status": "completed", "steps": 10}))
    with pytest.raises(JobInputError, match=f"cannot read {TRAINING_SUMMARY}: missing adapter, cpu"):
        TrainingSummary.read(tmp_path)
