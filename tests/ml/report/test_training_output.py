"""What the report reads of the train job's output/data/."""

import json

import pytest

from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.contract.metrics import MetricsLog
from flan_t5_detox.contract.paths import METRICS_FILE, TRAINING_SUMMARY
from flan_t5_detox.ml.report import TrainingCurves, read_training_output
from tests.contract.test_summary import summary_of
from tests.ml.report.synthetic import training_records


def test_no_training_output_gives_neither_curves_nor_summary():
    assert read_training_output(None) == (None, None)


def test_the_curves_and_the_summary_as_the_train_job_wrote_them(tmp_path):
    log = MetricsLog(tmp_path / METRICS_FILE)
    for record in training_records():
        log.append({**record, "kl": float("nan") if record["kl"] is None else record["kl"], "kl_coef": 0.2})
    curves, summary = read_training_output(tmp_path)
    assert summary is None  # a train job that stopped before its summary
    assert curves == TrainingCurves.from_records(training_records())
    assert curves.step == list(range(1, 11)) and curves.kl[4] is None and curves.reward_std[0] == 0.3

    written = summary_of(steps=10)
    written.write(tmp_path)
    assert read_training_output(tmp_path)[1] == written


def test_an_unreadable_training_summary_is_the_inputs_fault(tmp_path):
    (tmp_path / METRICS_FILE).write_text(json.dumps({"step": 1, "kl": 0.1}) + "\n")
    (tmp_path / TRAINING_SUMMARY).write_text("{not json")
    with pytest.raises(JobInputError, match=f"input 'training_output': cannot read {TRAINING_SUMMARY}"):
        read_training_output(tmp_path)
