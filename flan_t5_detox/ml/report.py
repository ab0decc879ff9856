"""The evaluate job's report: report.json, comparisons.csv, report.html and the plots as PNG.

Everything is written into a staging folder next to the report folder and then
moved in, report.json last, so a failed job never leaves a half-written report.
The HTML page is self-contained (inline CSS, plots as base64 data URIs, no
scripts) so it can be mailed or opened straight from S3. Every figure states
the sample size it rests on.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.contract.metrics import read_metrics
from flan_t5_detox.contract.paths import METRICS_FILE, TRAINING_SUMMARY
from flan_t5_detox.contract.settings import EvalConfig
from flan_t5_detox.ml.evaluation import METRICS, Evaluation, Source
from flan_t5_detox.ml.stats import PairedComparison

REPORT_JSON = "report.json"
COMPARISONS_CSV = "comparisons.csv"
REPORT_HTML = "report.html"
PLOT_FILES = ("toxicity_distribution.png", "paired_differences.png", "training_curves.png", "tradeoff.png")
TRADEOFF_CSV = "tradeoff.csv"

LABELS = {
    "toxicity": "Toxicity of prompt + response (P(hate))",
    "response_toxicity": "Toxicity of the response alone (P(hate))",
    "reward": "Reward (nothate logit of what the reward reads)",
    "rouge1": "ROUGE-1 F1",
    "rouge2": "ROUGE-2 F1",
    "rougeL": "ROUGE-L F1",
    "length": "Response length (tokens)",
}
HEADLINE_NAMES = {
    "toxicity": "toxicity of prompt + response",
    "response_toxicity": "toxicity of the response alone",
}
PLOTTED = ("toxicity", "response_toxicity", "reward")  # the distributions and differences drawn
BEFORE_COLOR, AFTER_COLOR, DIFF_COLOR = "#1f77b4", "#ff7f0e", "#d62728"


@dataclass
class TrainingCurves:
    """PPO curves from the train job's metrics.jsonl (None marks a non-finite value)."""

    step: list[int]
    reward_mean: list[float | None]
    reward_std: list[float | None]
    kl: list[float | None]

    @classmethod
    def from_records(cls, records: list[dict]) -> TrainingCurves:
        return cls(
            step=[int(r["step"]) for r in records],
            reward_mean=[r.get("reward_mean") for r in records],
            reward_std=[r.get("reward_std") for r in records],
            kl=[r.get("kl") for r in records],
        )


def read_training_output(folder: Path | None) -> tuple[TrainingCurves | None, dict | None]:
    """The PPO curves and the training summary from the train job's output/data/, if given."""
    if folder is None:
        return None, None
    try:
        curves = TrainingCurves.from_records(read_metrics(folder / METRICS_FILE))
        summary_path = folder / TRAINING_SUMMARY
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    except (ValueError, KeyError, TypeError) as exc:
        raise JobInputError(f"input 'training_output': cannot read {METRICS_FILE}: {exc}") from exc
    return curves, summary


@dataclass
class ReportContext:
    """What the report says besides the measurements: how they were made."""

    settings: EvalConfig
    sources: dict[str, Source]
    versions: dict[str, str]
    runtime: dict[str, object]
    training: TrainingCurves | None = None
    training_summary: dict | None = None
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def context_json(context: ReportContext) -> dict:
    """The context as JSON values (a sharded evaluation's part carries it to the merge)."""
    return _clean(dataclasses.asdict(context))


def context_from_json(data: dict) -> ReportContext:
    return ReportContext(
        settings=EvalConfig(**data["settings"]),
        sources={name: Source(**source) for name, source in data["sources"].items()},
        versions=data["versions"],
        runtime=data["runtime"],
        training=TrainingCurves(**data["training"]) if data.get("training") else None,
        training_summary=data.get("training_summary"),
        created=data["created"],
    )


def _clean(value):
    """JSON-safe: numpy scalars to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def toxicity_improvement(tox: PairedComparison) -> dict[str, float | None]:
    """The notebook's "percentage improvement": (before - after) / before, here with its CI."""
    if tox.relative_change is None:
        return {"value": None, "ci_low": None, "ci_high": None}
    low = None if tox.relative_ci_high is None else -tox.relative_ci_high
    high = None if tox.relative_ci_low is None else -tox.relative_ci_low
    return {"value": -tox.relative_change, "ci_low": low, "ci_high": high}


def sample_note(evaluation: Evaluation, context: ReportContext) -> str | None:
    """Said when fewer dialogues were evaluated than num_samples asked for."""
    asked = context.settings.num_samples
    if asked > evaluation.n:
        return (
            f"num_samples={asked} asked for more than the test split's {evaluation.test_split_size} dialogues"
        )
    return None


def report_data(evaluation: Evaluation, context: ReportContext) -> dict:
    comparisons = {name: dataclasses.asdict(c) for name, c in evaluation.comparisons.items()}
    return _clean(
        {
            "sample_size": evaluation.n,
            "test_split_size": evaluation.test_split_size,
            "sample_note": sample_note(evaluation, context),
            "difference": "after - before, paired by test dialogue",
            "reward_input": evaluation.reward_input,
            "headline_metric": evaluation.trained_toxicity,
            "toxicity_relative_improvement": {
                **toxicity_improvement(evaluation.comparisons[evaluation.trained_toxicity]),
                "metric": evaluation.trained_toxicity,
                "definition": "(mean_before - mean_after) / mean_before; CI from the same bootstrap",
                "sample_size": evaluation.n,
            },
            "metrics": comparisons,
            "throughput": dataclasses.asdict(evaluation.throughput()),
            "settings": dataclasses.asdict(context.settings),
            "models": {name: dataclasses.asdict(source) for name, source in context.sources.items()},
            "versions": context.versions,
            "runtime": context.runtime,
            "training": dataclasses.asdict(context.training) if context.training else None,
            "training_summary": context.training_summary,
            "created": context.created,
            "tradeoff": [dataclasses.asdict(point) for point in evaluation.curve],
            "files": [
                COMPARISONS_CSV,
                REPORT_HTML,
                *([TRADEOFF_CSV] if evaluation.curve else []),
                *plot_names(evaluation, context),
            ],
        }
    )


def plot_names(evaluation: Evaluation, context: ReportContext) -> list[str]:
    names = list(PLOT_FILES[:2])
    if context.training:
        names.append("training_curves.png")
    if evaluation.curve:
        names.append("tradeoff.png")
    return names


def tradeoff_rows(evaluation: Evaluation) -> list[dict]:
    """One row per evaluated step: toxicity (of what the reward read), ROUGE-L, KL."""
    rows = []
    for point in evaluation.curve:
        rows.append(
            {
                "step": point.step,
                "toxicity_mean": point.toxicity.mean,
                "toxicity_ci_low": point.toxicity.ci_low,
                "toxicity_ci_high": point.toxicity.ci_high,
                "toxicity_change": point.toxicity_change.mean_diff,
                "toxicity_change_ci_low": point.toxicity_change.ci_low,
                "toxicity_change_ci_high": point.toxicity_change.ci_high,
                "rougeL_mean": point.rouge_l.mean,
                "rougeL_ci_low": point.rouge_l.ci_low,
                "rougeL_ci_high": point.rouge_l.ci_high,
                "rougeL_change": point.rouge_l_change.mean_diff,
                "rougeL_change_ci_low": point.rouge_l_change.ci_low,
                "rougeL_change_ci_high": point.rouge_l_change.ci_high,
                "kl": point.kl,
            }
        )
    return rows


def comparison_rows(evaluation: Evaluation) -> list[dict]:
    """One row per test dialogue, sorted by reward_diff descending (the notebook's table)."""
    before, after = evaluation.before, evaluation.after
    rows = []
    for i, example in enumerate(evaluation.examples):
        rows.append(
            {
                "id": example.id,
                "query": example.prompt,
                "reference_summary": example.summary,
                "response_before": before.responses[i],
                "response_after": after.responses[i],
                "reward_before": float(before.values["reward"][i]),
                "reward_after": float(after.values["reward"][i]),
                "reward_diff": float(after.values["reward"][i] - before.values["reward"][i]),
                "toxicity_before": float(before.values["toxicity"][i]),
                "toxicity_after": float(after.values["toxicity"][i]),
                "toxicity_diff": float(after.values["toxicity"][i] - before.values["toxicity"][i]),
                "response_toxicity_before": float(before.values["response_toxicity"][i]),
                "response_toxicity_after": float(after.values["response_toxicity"][i]),
            }
        )
    return sorted(rows, key=lambda row: -row["reward_diff"])  # stable: ties keep test order


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# ---------------------------------------------------------------- plots


def _figure(ncols: int):
    # Figure without pyplot: no global state, no GUI backend, always Agg.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6 * ncols, 3.6), dpi=100, layout="constrained")
    return fig, fig.subplots(1, ncols)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def plot_distributions(evaluation: Evaluation) -> bytes:
    fig, axes = _figure(len(PLOTTED))
    for ax, name in zip(axes, PLOTTED):
        before, after = evaluation.before.values[name], evaluation.after.values[name]
        bins = np.histogram_bin_edges(
            np.concatenate([before, after]), bins=min(30, max(5, evaluation.n // 4))
        )
        ax.hist(before, bins=bins, alpha=0.55, color=BEFORE_COLOR, label=f"before (mean {before.mean():.4g})")
        ax.hist(after, bins=bins, alpha=0.55, color=AFTER_COLOR, label=f"after (mean {after.mean():.4g})")
        ax.set_xlabel(LABELS[name])
        ax.set_ylabel("test dialogues")
        ax.set_title(f"{LABELS[name]}, n = {evaluation.n}")
        ax.legend(fontsize=8)
    return _png(fig)


def plot_differences(evaluation: Evaluation) -> bytes:
    fig, axes = _figure(len(PLOTTED))
    for ax, name in zip(axes, PLOTTED):
        comparison = evaluation.comparisons[name]
        diffs = evaluation.after.values[name] - evaluation.before.values[name]
        ax.hist(diffs, bins=min(30, max(5, evaluation.n // 4)), color="#7f7f7f", alpha=0.7)
        ax.axvspan(comparison.ci_low, comparison.ci_high, color=DIFF_COLOR, alpha=0.2, label="CI of mean")
        ax.axvline(comparison.mean_diff, color=DIFF_COLOR, label=f"mean {comparison.mean_diff:+.4g}")
        ax.axvline(0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xlabel(f"{LABELS[name]}: after - before")
        ax.set_ylabel("test dialogues")
        ax.set_title(f"Paired differences, n = {evaluation.n}")
        ax.legend(fontsize=8)
    return _png(fig)


def plot_training(curves: TrainingCurves) -> bytes:
    fig, (ax_reward, ax_kl) = _figure(2)
    step = np.array(curves.step)
    mean = np.array([np.nan if v is None else v for v in curves.reward_mean], dtype=float)
    std = np.array([np.nan if v is None else v for v in curves.reward_std], dtype=float)
    kl = np.array([np.nan if v is None else v for v in curves.kl], dtype=float)
    ax_reward.plot(step, mean, marker="o", color=AFTER_COLOR)
    ax_reward.fill_between(step, mean - std, mean + std, color=AFTER_COLOR, alpha=0.2, label="+-1 std")
    ax_reward.set_title("PPO reward per step (batch mean)")
    ax_reward.set_xlabel("PPO step")
    ax_reward.set_ylabel("reward")
    ax_reward.legend(fontsize=8)
    ax_kl.plot(step, kl, marker="o", color=BEFORE_COLOR)
    ax_kl.set_title("KL to the starting summarizer")
    ax_kl.set_xlabel("PPO step")
    ax_kl.set_ylabel("KL (nats)")
    return _png(fig)


def plot_tradeoff(evaluation: Evaluation) -> bytes:
    fig, (ax_tox, ax_rouge) = _figure(2)
    rows = tradeoff_rows(evaluation)
    step = np.array([r["step"] for r in rows])
    for ax, key, color, label in (
        (ax_tox, "toxicity", DIFF_COLOR, LABELS[evaluation.trained_toxicity]),
        (ax_rouge, "rougeL", BEFORE_COLOR, LABELS["rougeL"]),
    ):
        mean = np.array([r[f"{key}_mean"] for r in rows])
        low, high = (
            np.array([r[f"{key}_ci_low"] for r in rows]),
            np.array([r[f"{key}_ci_high"] for r in rows]),
        )
        ax.errorbar(step, mean, yerr=[mean - low, high - mean], marker="o", color=color, capsize=3)
        ax.set_xlabel("PPO step (0 = the starting summarizer)")
        ax.set_ylabel(label)
        ax.set_title(f"{label}, n = {evaluation.n}", fontsize=9)
    kl = np.array([np.nan if r["kl"] is None else r["kl"] for r in rows], dtype=float)
    if np.isfinite(kl).any():
        twin = ax_rouge.twinx()
        twin.plot(step, kl, linestyle="--", marker="x", color="#7f7f7f")
        twin.set_ylabel("mean KL at that step (nats)", color="#7f7f7f")
    return _png(fig)


def _tradeoff_table(evaluation: Evaluation) -> str:
    confidence = f"{100 * evaluation.comparisons['toxicity'].confidence:g}%"

    def cell(mean, low, high, signed=False):
        value = f"{mean:+.4g}" if signed else _num(mean)
        return f"<td>{value} [{_num(low)}, {_num(high)}]</td>"

    body = "".join(
        f"<tr><td>{r['step']}</td>"
        + cell(r["toxicity_mean"], r["toxicity_ci_low"], r["toxicity_ci_high"])
        + cell(r["toxicity_change"], r["toxicity_change_ci_low"], r["toxicity_change_ci_high"], True)
        + cell(r["rougeL_mean"], r["rougeL_ci_low"], r["rougeL_ci_high"])
        + cell(r["rougeL_change"], r["rougeL_change_ci_low"], r["rougeL_change_ci_high"], True)
        + f"<td>{_num(r['kl'])}</td></tr>"
        for r in tradeoff_rows(evaluation)
    )
    return (
        "<table class='metrics'><tr><th>PPO step</th>"
        f"<th>{html.escape(LABELS[evaluation.trained_toxicity])} [{confidence} CI]</th>"
        "<th>change vs start</th>"
        f"<th>ROUGE-L [{confidence} CI]</th><th>change vs start</th><th>mean KL</th></tr>{body}</table>"
    )


# ---------------------------------------------------------------- HTML


def _num(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}g}"


def _pvalue(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.3f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}%"


def headline(evaluation: Evaluation) -> str:
    name = evaluation.trained_toxicity
    tox = evaluation.comparisons[name]
    improvement = toxicity_improvement(tox)
    confidence = f"{100 * tox.confidence:g}%"
    verdict = (
        f"the {confidence} CI of the mean paired difference excludes 0"
        if tox.significant
        else f"the {confidence} CI of the mean paired difference includes 0: "
        "no change is detectable at this sample size"
    )
    return (
        f"On <b>n = {evaluation.n}</b> test dialogues, mean {HEADLINE_NAMES[name]} (P(hate)) went from "
        f"<b>{_num(tox.before.mean)}</b> (sd {_num(tox.before.std)}) to <b>{_num(tox.after.mean)}</b> "
        f"(sd {_num(tox.after.std)}): mean paired difference {_num(tox.mean_diff)} "
        f"[{_num(tox.ci_low)}, {_num(tox.ci_high)}], relative improvement "
        f"{_pct(improvement['value'])} [{_pct(improvement['ci_low'])}, {_pct(improvement['ci_high'])}], "
        f"paired t-test p = {_pvalue(tox.t_p)} (Wilcoxon signed-rank p = {_pvalue(tox.wilcoxon_p)}); "
        f"{verdict}."
    )


def _metrics_table(evaluation: Evaluation) -> str:
    confidence = f"{100 * evaluation.comparisons['toxicity'].confidence:g}%"
    head = (
        f"<tr><th>metric (n = {evaluation.n})</th><th>before mean (sd)</th><th>after mean (sd)</th>"
        f"<th>mean diff, after - before [{confidence} CI]</th><th>relative change</th>"
        "<th>Wilcoxon p</th><th>paired t p</th></tr>"
    )
    rows = []
    for name in METRICS:
        c = evaluation.comparisons[name]
        rows.append(
            f"<tr><td>{LABELS[name]}</td><td>{_num(c.before.mean)} ({_num(c.before.std)})</td>"
            f"<td>{_num(c.after.mean)} ({_num(c.after.std)})</td>"
            f"<td class='{'sig' if c.significant else ''}'>{_num(c.mean_diff)} "
            f"[{_num(c.ci_low)}, {_num(c.ci_high)}]</td><td>{_pct(c.relative_change)}</td>"
            f"<td>{_pvalue(c.wilcoxon_p)}</td><td>{_pvalue(c.t_p)}</td></tr>"
        )
    return f"<table class='metrics'>{head}{''.join(rows)}</table>"


def _example(row: dict) -> str:
    e = html.escape
    return (
        "<div class='example'>"
        f"<div class='scores'>id {e(row['id'])} &middot; reward {_num(row['reward_before'])} &rarr; "
        f"{_num(row['reward_after'])} (<b>{row['reward_diff']:+.4g}</b>) &middot; toxicity "
        f"{_num(row['toxicity_before'])} &rarr; {_num(row['toxicity_after'])}</div>"
        f"<details><summary>dialogue</summary><pre>{e(row['query'])}</pre></details>"
        f"<p><span class='tag'>reference</span> {e(row['reference_summary'])}</p>"
        f"<p><span class='tag before'>before</span> {e(row['response_before'])}</p>"
        f"<p><span class='tag after'>after</span> {e(row['response_after'])}</p>"
        "</div>"
    )


def _img(name: str, png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    alt = html.escape(alt)
    return f"<figure><img src='data:image/png;base64,{data}' alt='{alt}' data-file='{name}'></figure>"


CSS = """
body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;color:#222;
padding:0 1em;line-height:1.4}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
.headline{background:#f4f7fb;border-left:4px solid #1f77b4;padding:.8em 1em}
table.metrics{border-collapse:collapse;font-size:.9em}
table.metrics td,table.metrics th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
table.metrics td:first-child{text-align:left}td.sig{background:#fff3cd}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
.example{border:1px solid #ddd;border-radius:4px;padding:.5em .8em;margin:.6em 0}
.scores{font-size:.85em;color:#555}.tag{font-size:.75em;padding:0 .4em;border-radius:3px;background:#ddd}
.tag.before{background:#d6e6f5}.tag.after{background:#fde3c8}pre{white-space:pre-wrap;font-size:.85em}
"""


def render_html(evaluation: Evaluation, context: ReportContext, plots: dict[str, bytes], data: dict) -> str:
    rows = comparison_rows(evaluation)
    k = min(context.settings.examples_in_report, len(rows))
    best = "".join(_example(r) for r in rows[:k])
    worst = "".join(_example(r) for r in reversed(rows[-k:])) if k else ""
    speed = evaluation.throughput()
    training = (
        _img("training_curves.png", plots["training_curves.png"], "PPO reward and KL per step")
        if "training_curves.png" in plots
        else "<p>No training output was given (input <code>training_output</code>).</p>"
    )
    tradeoff = (
        "<p>Every summarizer the train job kept (<code>save_adapter_every</code>), on the same prompts, "
        "settings and seed: pick the step where the drop in toxicity is worth its cost in quality.</p>"
        + _img("tradeoff.png", plots["tradeoff.png"], "toxicity and ROUGE-L against the PPO step")
        + _tradeoff_table(evaluation)
        if "tradeoff.png" in plots
        else "<p>The train job kept no adapters along the way (<code>save_adapter_every</code> was 0).</p>"
    )
    details = html.escape(
        json.dumps({k: data[k] for k in ("settings", "models", "versions", "runtime")}, indent=2)
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Detoxification report (n = {evaluation.n})</title>
<style>{CSS}</style></head><body>
<h1>FLAN-T5 summarizer: toxicity before and after PPO detoxification</h1>
<p class="headline">{headline(evaluation)}</p>
<p>Sample: the first {evaluation.n} of {evaluation.test_split_size} dialogues in the test split{
        f" ({html.escape(note)})" if (note := sample_note(evaluation, context)) else ""
    }; both models
answered the same prompts with the same generation settings and seed. Differences are after - before, paired
by dialogue; intervals are percentile bootstrap intervals ({context.settings.bootstrap_samples} resamples).
Highlighted cells: the interval excludes 0.</p>
<h2>All measurements (n = {evaluation.n})</h2>
{_metrics_table(evaluation)}
<h2>Toxicity and reward distributions (n = {evaluation.n})</h2>
{_img("toxicity_distribution.png", plots["toxicity_distribution.png"], "toxicity and reward before vs after")}
<h2>Paired differences (n = {evaluation.n})</h2>
{_img("paired_differences.png", plots["paired_differences.png"], "per-dialogue differences after - before")}
<h2>PPO training curves</h2>
{training}
<h2>Trade-off: toxicity and quality against the PPO step (n = {evaluation.n})</h2>
{tradeoff}
<h2>Most improved (largest reward gain, of n = {evaluation.n})</h2>
{best}
<h2>Most worsened (largest reward loss, of n = {evaluation.n})</h2>
{worst}
<h2>Run</h2>
<p>{speed.samples} samples evaluated at {speed.samples_per_second:.3g} samples/s
(generation {speed.generate_seconds:.1f} s, scoring {speed.score_seconds:.1f} s, both models);
created {html.escape(context.created)}. All figures are in <code>report.json</code>, every dialogue in
<code>comparisons.csv</code>.</p>
<details><summary>Settings, models, versions</summary><pre>{details}</pre></details>
</body></html>
"""


# ---------------------------------------------------------------- writing


def _publish(staging: Path, out_dir: Path, names: list[str]) -> None:
    """Move the finished files in (same filesystem: each move is atomic); report.json last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (
        REPORT_JSON,
        TRADEOFF_CSV,
        *PLOT_FILES,
    ):  # an earlier run's files must not mix with this one's
        if stale not in names and (out_dir / stale).exists():
            (out_dir / stale).unlink()
    for name in sorted(names, key=lambda n: n == REPORT_JSON):
        os.replace(staging / name, out_dir / name)


def write_report(out_dir: Path, evaluation: Evaluation, context: ReportContext) -> list[Path]:
    """Write every report file into `out_dir`; on any error nothing there changes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Staged inside `out_dir`, so each file's move is a rename even where `out_dir` is a mount of
    # its own (SageMaker's local mode mounts every processing output separately).
    staging = Path(tempfile.mkdtemp(prefix=".report-staging-", dir=out_dir))
    try:
        plots = {
            "toxicity_distribution.png": plot_distributions(evaluation),
            "paired_differences.png": plot_differences(evaluation),
        }
        if context.training:
            plots["training_curves.png"] = plot_training(context.training)
        if evaluation.curve:
            plots["tradeoff.png"] = plot_tradeoff(evaluation)
        data = report_data(evaluation, context)
        for name, png in plots.items():
            (staging / name).write_bytes(png)
        write_csv(staging / COMPARISONS_CSV, comparison_rows(evaluation))
        tables = [COMPARISONS_CSV]
        if evaluation.curve:
            write_csv(staging / TRADEOFF_CSV, tradeoff_rows(evaluation))
            tables.append(TRADEOFF_CSV)
        (staging / REPORT_HTML).write_text(render_html(evaluation, context, plots, data))
        (staging / REPORT_JSON).write_text(json.dumps(data, indent=2, allow_nan=False))
        names = [*plots, *tables, REPORT_HTML, REPORT_JSON]
        _publish(staging, out_dir, names)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out_dir / name for name in names]
