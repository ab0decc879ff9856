"""The report files from a synthetic evaluation (no models): contents, order, atomicity, rendering."""

import base64
import csv
import dataclasses
import json
import re
import shutil
import struct
import subprocess

import numpy as np
import pytest
from matplotlib.image import imread

from flan_t5_detox.contract.settings import EvalConfig
from flan_t5_detox.ml import evaluation, report
from flan_t5_detox.ml.evaluation import Evaluation, Side, Source
from tests.helpers import tiny_config, tiny_splits

N = 30
CONFIG = EvalConfig(bootstrap_samples=1000, examples_in_report=3)
HOSTILE_TEXT = "<script>alert('x')</script> & friends"


def synthetic_evaluation(seed: int = 0) -> Evaluation:
    """Toxicity drops by ~0.05 on average; responses include markup that must be escaped."""
    rng = np.random.default_rng(seed)
    examples = tiny_splits(tiny_config()).test[:N]

    base = rng.beta(2, 8, N)

    def side(toxicity: np.ndarray, tag: str) -> Side:
        values = {
            "toxicity": toxicity,
            "response_toxicity": toxicity / 2,
            "reward": 2.0 - 4 * toxicity + rng.normal(0, 0.1, N),
            "rouge1": rng.uniform(0.2, 0.5, N),
            "rouge2": rng.uniform(0.0, 0.2, N),
            "rougeL": rng.uniform(0.2, 0.4, N),
            "length": rng.integers(5, 40, N).astype(float),
        }
        responses = [f"{tag} summary {i} {HOSTILE_TEXT}" for i in range(N)]
        return Side(responses, values, generate_seconds=3.0, score_seconds=1.0)

    before = side(np.clip(base + 0.05, 0, 1), "before")
    after = side(np.clip(base + rng.normal(0, 0.02, N), 0, 1), "after")
    return Evaluation(examples, 37, before, after, evaluation.compare(before, after, CONFIG))


def context(training: bool = True) -> report.ReportContext:
    records = [{"step": s, "reward_mean": 0.1 * s, "reward_std": 0.3, "kl": 0.01 * s} for s in range(1, 11)]
    records[4]["kl"] = None  # a non-finite value as metrics.jsonl records it
    return report.ReportContext(
        settings=CONFIG,
        sources={"base_model": Source("google/flan-t5-base"), "after_adapter": Source("/x", {"a.bin": "00"})},
        versions={"torch": "1.13.1"},
        runtime={"dtype": "float32", "threads": 2},
        training=report.TrainingCurves.from_records(records) if training else None,
    )


def test_report_files_and_their_contents(tmp_path):
    result = synthetic_evaluation()
    out = tmp_path / "report"
    written = report.write_report(out, result, context())

    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in written)
    assert names == sorted(
        [
            "report.json",
            "comparisons.csv",
            "report.html",
            "toxicity_distribution.png",
            "paired_differences.png",
            "training_curves.png",
        ]
    )
    assert not list(tmp_path.rglob(".report-staging-*"))

    data = json.loads((out / "report.json").read_text())
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
    assert set(data["metrics"]) == set(evaluation.METRICS)
    assert data["throughput"]["samples_per_second"] == pytest.approx(N / 8.0)
    assert data["settings"]["bootstrap_samples"] == 1000
    assert data["training"]["kl"][4] is None
    assert data["models"]["after_adapter"]["sha256"] == {"a.bin": "00"}

    with (out / "comparisons.csv").open() as handle:
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

    page = (out / "report.html").read_text()
    assert "<script" not in page  # model text is escaped; the page has no scripts of its own
    assert "&lt;script&gt;" in page
    assert f"n = {N}" in page and "of 37 dialogues in the test split" in page
    assert page.count("class='example'") == 2 * CONFIG.examples_in_report


def test_no_training_output_means_no_curve_and_stale_files_go(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "training_curves.png").write_bytes(b"from an earlier run")
    report.write_report(out, synthetic_evaluation(), context(training=False))
    assert not (out / "training_curves.png").exists()
    assert "No training output was given" in (out / "report.html").read_text()
    assert json.loads((out / "report.json").read_text())["training"] is None


def test_a_failure_while_writing_leaves_the_report_folder_untouched(tmp_path):
    out = tmp_path / "report"
    report.write_report(out, synthetic_evaluation(seed=1), context())
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    broken = synthetic_evaluation(seed=2)
    broken.after.responses.pop()  # the CSV fails after the plots are written to staging
    with pytest.raises(IndexError):
        report.write_report(out, broken, context())
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(tmp_path.rglob(".report-staging-*"))


# ---------------------------------------------------------------- the page in a real browser


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "headless Chromium is needed: apt-get install -y --no-install-recommends chromium"
    return path


def _chromium_run(tmp_path, *args) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]
    return subprocess.run([_chromium(), *flags, *args], capture_output=True, text=True, timeout=120)


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


def test_report_renders_in_headless_chromium_with_its_plots(tmp_path):
    out = tmp_path / "report"
    report.write_report(out, synthetic_evaluation(), context())
    url = (out / "report.html").as_uri()

    dom = _chromium_run(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    images = re.findall(r"<img src=\"data:image/png;base64,([^\"]+)\"[^>]*data-file=\"([^\"]+)\"", dom.stdout)
    assert [name for _, name in images] == [
        "toxicity_distribution.png",
        "paired_differences.png",
        "training_curves.png",
    ]
    for data, name in images:
        png = base64.b64decode(data)
        assert png == (out / name).read_bytes()  # the page embeds exactly the PNG files
        width, height = _png_size(png)
        assert width >= 500 and height >= 300

    shot = tmp_path / "screenshot.png"
    result = _chromium_run(tmp_path, f"--screenshot={shot}", "--window-size=1200,4200", url)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (4200, 1200)
    # Plots are the only strongly coloured things on the page: their bars and lines must be painted.
    saturated = (pixels.max(axis=2) - pixels.min(axis=2)) > 0.3
    assert saturated.sum() > 20000, saturated.sum()
    assert (pixels.min(axis=2) < 0.3).sum() > 5000  # and there is dark text


def test_the_tradeoff_curve_is_in_every_report_format(tmp_path):
    """Kept steps between the start and the final adapter: each on the curve with its CIs and KL."""
    result = synthetic_evaluation()
    result.reward_input = "response"
    rng = np.random.default_rng(3)
    steps = {}
    for step, shift in ((2, 0.03), (4, 0.015), (6, 0.01)):
        values = {k: v.copy() for k, v in result.before.values.items()}
        values["response_toxicity"] = np.clip(
            values["response_toxicity"] - shift + rng.normal(0, 0.01, N), 0, 1
        )
        steps[step] = Side(result.before.responses, values, 1.0, 1.0)
    kl = {s: 0.01 * s for s in range(1, 11)}
    result.curve = evaluation.tradeoff_curve(result, steps, 10, CONFIG, kl)
    assert [p.step for p in result.curve] == [0, 2, 4, 6, 10]
    start, final = result.curve[0], result.curve[-1]
    assert start.toxicity_change.mean_diff == 0 and start.kl == 0
    assert final.toxicity_change.mean_diff == pytest.approx(result.comparisons["response_toxicity"].mean_diff)
    assert final.kl == pytest.approx(0.1)
    for point in result.curve:  # the interval holds the mean it is about
        assert point.toxicity.ci_low <= point.toxicity.mean <= point.toxicity.ci_high
        assert point.rouge_l.ci_low <= point.rouge_l.mean <= point.rouge_l.ci_high

    out = tmp_path / "report"
    report.write_report(out, result, context())
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


def test_fewer_dialogues_than_num_samples_asked_for_is_stated_in_the_report(tmp_path):
    evaluation = synthetic_evaluation()
    asked = dataclasses.replace(context(), settings=dataclasses.replace(CONFIG, num_samples=N + 100))
    report.write_report(tmp_path, evaluation, asked)
    data = json.loads((tmp_path / report.REPORT_JSON).read_text())
    assert (
        "asked for more than the test split&#x27;s 37 dialogues"
        in (tmp_path / report.REPORT_HTML).read_text()
    )
    assert data["sample_note"] == f"num_samples={N + 100} asked for more than the test split's 37 dialogues"
    exact = dataclasses.replace(context(), settings=dataclasses.replace(CONFIG, num_samples=N))
    assert report.report_data(evaluation, exact)["sample_note"] is None
