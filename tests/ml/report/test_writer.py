"""The report folder: which files, written whole or not at all, no leftovers of an earlier run."""

import csv
import json

import numpy as np
import pytest
from matplotlib.image import imread

from flan_t5_detox.ml import tradeoff
from flan_t5_detox.ml.evaluation import Side
from flan_t5_detox.ml.report import REPORT_JSON, write_report
from tests.ml.report.synthetic import CONFIG, N, context, synthetic_evaluation


def test_report_files(written):
    names = sorted(p.name for p in written.folder.iterdir())
    assert names == sorted(p.name for p in written.paths)
    assert names == sorted(
        [
            "report.json",
            "comparisons.csv",
            "report.html",
            "max_toxicity_distribution.png",
            "fluency_diversity.png",
            "toxicity_distribution.png",
            "paired_differences.png",
            "training_curves.png",
        ]
    )
    assert not list(written.folder.parent.rglob(".report-staging-*"))


def test_report_json_lists_the_other_files(written):
    data = json.loads((written.folder / REPORT_JSON).read_text())
    assert sorted(data["files"]) == sorted(p.name for p in written.paths if p.name != REPORT_JSON)


def test_no_training_output_means_no_curve_and_stale_files_go(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "training_curves.png").write_bytes(b"from an earlier run")
    write_report(out, synthetic_evaluation(), context(training=False))
    assert not (out / "training_curves.png").exists()
    assert "No training output was given" in (out / "report.html").read_text()
    assert json.loads((out / "report.json").read_text())["training"] is None


def test_files_a_report_does_not_have_are_left_alone(tmp_path):
    """Only the report's own optional files count as stale: whatever else is in the folder stays."""
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    write_report(out, synthetic_evaluation(), context(training=False))
    assert (out / "notes.txt").read_text() == "the user's"


def test_a_failure_while_writing_leaves_the_report_folder_untouched(tmp_path):
    out = tmp_path / "report"
    write_report(out, synthetic_evaluation(seed=1), context())
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    broken = synthetic_evaluation(seed=2)
    broken.after.texts.pop()  # the CSV fails after the plots are written to staging
    with pytest.raises(IndexError):
        write_report(out, broken, context())
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(tmp_path.rglob(".report-staging-*"))


def test_the_tradeoff_curve_is_in_every_report_format(tmp_path):
    """Kept steps between the start and the final adapter: each on the curve with its CIs and KL."""
    result = synthetic_evaluation()
    result.reward_input = "response"
    rng = np.random.default_rng(3)
    steps = {}
    for step, shift in ((2, 0.03), (4, 0.015), (6, 0.01)):
        values = {k: v[:, 0].copy() for k, v in result.before.samples.items()}
        values["response_toxicity"] = np.clip(
            values["response_toxicity"] - shift + rng.normal(0, 0.01, N), 0, 1
        )
        steps[step] = Side.single(result.before.responses, values, 1.0, 1.0)
    kl = {s: 0.01 * s for s in range(1, 11)}
    result.curve = tradeoff.tradeoff_curve(result, steps, 10, CONFIG, kl)
    assert [p.step for p in result.curve] == [0, 2, 4, 6, 10]
    start, final = result.curve[0], result.curve[-1]
    assert start.toxicity_change.mean_diff == 0 and start.kl == 0
    assert final.toxicity_change.mean_diff == pytest.approx(result.comparisons["response_toxicity"].mean_diff)
    assert final.kl == pytest.approx(0.1)
    for point in result.curve:  # the interval holds the mean it is about
        assert point.toxicity.ci_low <= point.toxicity.mean <= point.toxicity.ci_high
        assert point.rouge_l.ci_low <= point.rouge_l.mean <= point.rouge_l.ci_high

    out = tmp_path / "report"
    write_report(out, result, context())
    data = json.loads((out / "report.json").read_text())
    assert data["headline_metric"] == "response_toxicity" and [p["step"] for p in data["tradeoff"]] == [
        0,
        2,
        4,
        6,
        10,
    ]
    assert "tradeoff.csv" in data["files"] and "tradeoff.png" in data["files"]
    with open(out / "tradeoff.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [0, 2, 4, 6, 10]
    assert float(rows[2]["toxicity_mean"]) == pytest.approx(result.curve[2].toxicity.mean)
    page = (out / "report.html").read_text()
    assert "Trade-off: toxicity and quality against the PPO step" in page
    assert page.count("<tr><td>") >= 5 and "tradeoff.png" in page
    assert imread(out / "tradeoff.png").shape[2] in (3, 4)
    assert "mean toxicity of the response alone" in page  # the headline names what was trained on


def test_verdict_holds_the_figures_a_quality_gate_reads(tmp_path):
    result = synthetic_evaluation()
    write_report(tmp_path, result, context())
    verdict = json.loads((tmp_path / "report.json").read_text())["verdict"]
    tox, rouge = result.comparisons[result.trained_toxicity], result.comparisons["rougeL"]
    assert verdict["toxicity_metric"] == result.trained_toxicity
    assert verdict["toxicity_diff_ci_high"] == pytest.approx(tox.ci_high)
    assert verdict["rouge_l_diff_ci_low"] == pytest.approx(rouge.ci_low)
    assert verdict["sample_size"] == result.n
