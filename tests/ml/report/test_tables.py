"""The figures as data: report.json's content, comparisons.csv's rows, the sample note."""

import csv
import dataclasses
import json

import numpy as np
import pytest

from flan_t5_detox.ml.report import REPORT_HTML, REPORT_JSON, report_data, write_report
from flan_t5_detox.ml.report.tables import toxicity_improvement
from flan_t5_detox.ml.stats import compare_paired
from tests.ml.report.synthetic import CONFIG, N, context, synthetic_evaluation


def test_report_json_holds_every_figure(written):
    result = written.evaluation
    data = json.loads((written.folder / "report.json").read_text())
    assert data["sample_size"] == N and data["test_split_size"] == 37
    tox = data["metrics"]["toxicity"]
    assert tox["n"] == N and tox["before"]["n"] == N
    assert tox["before"]["mean"] == pytest.approx(result.before.values["toxicity"].mean())
    assert tox["mean_diff"] == pytest.approx(
        (result.after.values["toxicity"] - result.before.values["toxicity"]).mean()
    )
    assert tox["ci_low"] < tox["mean_diff"] < tox["ci_high"] < 0  # a real drop, found
    improvement = data["toxicity_relative_improvement"]
    assert improvement["value"] == pytest.approx(-tox["relative_change"]) and improvement["value"] > 0
    assert improvement["ci_low"] <= improvement["value"] <= improvement["ci_high"]
    assert improvement["sample_size"] == N
    assert set(data["metrics"]) == set(result.before.values) == set(result.comparisons)
    assert {"toxicity_max", "toxicity_probability", "perplexity"} <= set(data["metrics"])
    assert data["throughput"]["samples_per_second"] == pytest.approx(N / 8.0)
    assert data["settings"]["bootstrap_samples"] == 1000
    assert data["training"]["kl"][4] is None
    assert data["models"]["after_adapter"]["sha256"] == {"a.bin": "00"}


def test_comparisons_csv_has_one_row_per_dialogue_by_reward_gain(written):
    with (written.folder / "comparisons.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == N
    assert list(rows[0])[:8] == [
        "id",
        "query",
        "reference_summary",
        "response_before",
        "response_after",
        "reward_before",
        "reward_after",
        "reward_diff",
    ]
    diffs = [float(r["reward_diff"]) for r in rows]
    assert diffs == sorted(diffs, reverse=True)
    for row in rows:
        assert float(row["reward_diff"]) == pytest.approx(
            float(row["reward_after"]) - float(row["reward_before"])
        )
    assert rows[0]["query"].startswith("Summarize the following conversation.")


def test_the_improvement_is_the_relative_drop_with_its_interval_turned_round():
    tox = compare_paired(np.array([0.4, 0.5, 0.6, 0.5]), np.array([0.2, 0.3, 0.3, 0.2]), 0.95, 200, 0)
    improvement = toxicity_improvement(tox)
    assert improvement == {
        "value": -tox.relative_change,
        "ci_low": -tox.relative_ci_high,
        "ci_high": -tox.relative_ci_low,
    }
    assert improvement["ci_low"] <= improvement["value"] <= improvement["ci_high"]
    none = dataclasses.replace(tox, relative_change=None)  # a mean before of 0: no relative change
    assert toxicity_improvement(none) == {"value": None, "ci_low": None, "ci_high": None}


def test_fewer_dialogues_than_num_samples_asked_for_is_stated_in_the_report(tmp_path):
    evaluation = synthetic_evaluation()
    asked = dataclasses.replace(context(), settings=dataclasses.replace(CONFIG, num_samples=N + 100))
    write_report(tmp_path, evaluation, asked)
    data = json.loads((tmp_path / REPORT_JSON).read_text())
    assert "asked for more than the test split&#x27;s 37 dialogues" in (tmp_path / REPORT_HTML).read_text()
    assert data["sample_note"] == f"num_samples={N + 100} asked for more than the test split's 37 dialogues"
    exact = dataclasses.replace(context(), settings=dataclasses.replace(CONFIG, num_samples=N))
    assert report_data(evaluation, exact, files=[])["sample_note"] is None
