"""report.html: one self-contained page (inline CSS, plots as base64 data URIs, no scripts), so it
can be mailed or opened straight from S3. Model text is escaped; every figure states its n."""

from __future__ import annotations

import base64
import json
import math
from html import escape

from flan_t5_detox.ml.diversity import DISTINCT_N
from flan_t5_detox.ml.evaluation import TOXIC_THRESHOLD, Evaluation
from flan_t5_detox.ml.report.context import ReportContext
from flan_t5_detox.ml.report.plots import (
    DIFFERENCES,
    DISTRIBUTIONS,
    FLUENCY,
    MAX_TOXICITY,
    TRADEOFF,
    TRAINING,
    Plot,
)
from flan_t5_detox.ml.report.tables import (
    LABELS,
    comparison_rows,
    field_figures,
    sample_note,
    toxicity_improvement,
    tradeoff_rows,
)

REPORT_HTML = "report.html"
HEADLINE_NAMES = {
    "toxicity": "toxicity of prompt + response",
    "response_toxicity": "toxicity of the response alone",
}
CSS = """
body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;color:#222;
padding:0 1em;line-height:1.4}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
.headline{background:#f4f7fb;border-left:4px solid #1f77b4;padding:.8em 1em}
table.metrics{border-collapse:collapse;font-size:.9em}
table.metrics td,table.metrics th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
table.metrics td:first-child,table.metrics td.text{text-align:left}td.sig{background:#fff3cd}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
.example{border:1px solid #ddd;border-radius:4px;padding:.5em .8em;margin:.6em 0}
.scores{font-size:.85em;color:#555}.tag{font-size:.75em;padding:0 .4em;border-radius:3px;background:#ddd}
.tag.before{background:#d6e6f5}.tag.after{background:#fde3c8}pre{white-space:pre-wrap;font-size:.85em}
.flag{background:#fdecea;border-left:4px solid #d62728;padding:.8em 1em}
"""


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


def _confidence(evaluation: Evaluation) -> str:
    return f"{100 * evaluation.comparisons['toxicity'].confidence:g}%"


def headline(evaluation: Evaluation) -> str:
    """The page's first sentence: the trained toxicity before and after, with its CI and tests."""
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
        f"{verdict}. {_field_headline(evaluation)}"
    )


def _field_headline(evaluation: Evaluation) -> str:
    """The field's figures of the toxicity the verdict rests on (the judge's, if any)."""
    name = evaluation.judged_toxicity
    maximum, probability = (evaluation.comparisons[name + suffix] for suffix in ("_max", "_probability"))
    who = "the independent judge" if evaluation.judged else "the reward model"
    return (
        f"Over k = {evaluation.k} samples per prompt, by {who}: expected maximum toxicity "
        f"<b>{_num(maximum.before.mean)}</b> &rarr; <b>{_num(maximum.after.mean)}</b> "
        f"({_num(maximum.mean_diff)} [{_num(maximum.ci_low)}, {_num(maximum.ci_high)}]), "
        "toxicity probability "
        f"<b>{_num(probability.before.mean)}</b> &rarr; <b>{_num(probability.after.mean)}</b> "
        f"({_num(probability.mean_diff)} [{_num(probability.ci_low)}, {_num(probability.ci_high)}])."
    )


def _metrics_table(evaluation: Evaluation) -> str:
    head = (
        f"<tr><th>metric (n = {evaluation.n})</th><th>before mean (sd)</th><th>after mean (sd)</th>"
        f"<th>mean diff, after - before [{_confidence(evaluation)} CI]</th><th>relative change</th>"
        "<th>Wilcoxon p</th><th>paired t p</th></tr>"
    )
    rows = []
    for name, c in evaluation.comparisons.items():
        rows.append(
            f"<tr><td>{LABELS[name]}</td><td>{_num(c.before.mean)} ({_num(c.before.std)})</td>"
            f"<td>{_num(c.after.mean)} ({_num(c.after.std)})</td>"
            f"{_diff_cell(c)}<td>{_pct(c.relative_change)}</td>"
            f"<td>{_pvalue(c.wilcoxon_p)}</td><td>{_pvalue(c.t_p)}</td></tr>"
        )
    return f"<table class='metrics'>{head}{''.join(rows)}</table>"


def _diff_cell(c) -> str:
    """The mean paired difference and its CI, highlighted when the CI excludes 0."""
    interval = f"{_num(c.mean_diff)} [{_num(c.ci_low)}, {_num(c.ci_high)}]"
    return f"<td class='{'sig' if c.significant else ''}'>{interval}</td>"


FIELD_NAMES = {
    "mean": "mean over samples",
    "expected_maximum": "expected maximum",
    "probability": f"toxicity probability (any sample &ge; {TOXIC_THRESHOLD})",
}


def _field_table(evaluation: Evaluation) -> str:
    """Each toxicity's three figures over k samples per prompt, before and after."""
    rows = []
    for name, figures in field_figures(evaluation).items():
        for figure, c in figures.items():
            rows.append(
                f"<tr><td>{escape(LABELS[name])}</td><td class='text'>{FIELD_NAMES[figure]}</td>"
                f"<td>{_num(c.before.mean)}</td><td>{_num(c.after.mean)}</td>{_diff_cell(c)}"
                f"<td>{_pvalue(c.t_p)}</td></tr>"
            )
    return (
        f"<table class='metrics'><tr><th>toxicity (n = {evaluation.n} prompts, k = {evaluation.k})</th>"
        f"<th>figure</th><th>before</th><th>after</th><th>after - before [{_confidence(evaluation)} CI]</th>"
        f"<th>paired t p</th></tr>{''.join(rows)}</table>"
    )


def _judge_section(evaluation: Evaluation) -> str:
    if not evaluation.judged:
        return (
            "<p>No judge was given (input <code>judge_model</code>): every toxicity here is the reward "
            "model's, the classifier PPO optimised against. An independent judge guards against a policy "
            "that learned the reward model's blind spots.</p>"
        )
    reward = evaluation.comparisons[evaluation.trained_toxicity]
    judge = evaluation.comparisons[evaluation.judged_toxicity]
    text = (
        f"<p>The reward model's mean {HEADLINE_NAMES[evaluation.trained_toxicity]} moved by "
        f"{_num(reward.mean_diff)} [{_num(reward.ci_low)}, {_num(reward.ci_high)}]; the independent judge's, "
        f"by {_num(judge.mean_diff)} [{_num(judge.ci_low)}, {_num(judge.ci_high)}] (n = {judge.n}).</p>"
    )
    if evaluation.reward_hack_suspected:
        text += (
            "<p class='flag'><b>Possible reward hack.</b> The reward model sees significantly less "
            "toxicity after PPO, but the independent judge does not. The policy may have learned what the "
            "reward model misses rather than to stop being toxic: read the examples before trusting the "
            "headline.</p>"
        )
    return text


def _fluency_section(evaluation: Evaluation, plots: dict[str, bytes]) -> str:
    before, after = evaluation.diversity["before"], evaluation.diversity["after"]
    rows = "".join(
        f"<tr><td>distinct-{n}</td><td>{_num(before.distinct[n])}</td><td>{_num(after.distinct[n])}</td>"
        f"<td>{after.distinct[n] - before.distinct[n]:+.4g}</td></tr>"
        for n in DISTINCT_N
    ) + (
        f"<tr><td>share of samples duplicating another</td><td>{_num(before.duplicate_share)}</td>"
        f"<td>{_num(after.duplicate_share)}</td>"
        f"<td>{after.duplicate_share - before.duplicate_share:+.4g}</td></tr>"
    )
    ppl = evaluation.comparisons["perplexity"]
    return (
        f"<p>Perplexity under the starting summarizer (per dialogue, mean of its k samples): "
        f"{_num(ppl.before.mean)} &rarr; {_num(ppl.after.mean)}, difference {_num(ppl.mean_diff)} "
        f"[{_num(ppl.ci_low)}, {_num(ppl.ci_high)}] (n = {ppl.n}). Diversity is over all "
        f"{after.samples} samples of each model.</p>"
        + _img(FLUENCY, plots)
        + "<table class='metrics'><tr><th>over all samples</th><th>before</th><th>after</th>"
        f"<th>after - before</th></tr>{rows}</table>"
    )


def _slices_section(evaluation: Evaluation) -> str:
    rows = []
    for piece in evaluation.slices:
        if not piece.comparisons:
            rows.append(
                f"<tr><td>{piece.name}</td><td>{piece.n}</td><td colspan='4'>too few to compare</td></tr>"
            )
        for figure, c in piece.comparisons.items():
            rows.append(
                f"<tr><td>{piece.name}</td><td>{piece.n}</td><td class='text'>{escape(LABELS[figure])}</td>"
                f"<td>{_num(c.before.mean)}</td><td>{_num(c.after.mean)}</td>{_diff_cell(c)}</tr>"
            )
    rules = "; ".join(f"<b>{p.name}</b>: {escape(p.rule)}" for p in evaluation.slices)
    return (
        f"<p>The effect lives where there was toxicity to remove. {rules}.</p>"
        "<table class='metrics'><tr><th>slice</th><th>n</th><th>figure</th><th>before</th><th>after</th>"
        f"<th>after - before [{_confidence(evaluation)} CI]</th></tr>{''.join(rows)}</table>"
    )


def _tradeoff_table(evaluation: Evaluation) -> str:
    def cells(row: dict, key: str) -> str:
        """`key`'s estimate and its change against the start, each with its interval."""
        estimate = f"{_num(row[key + '_mean'])} [{_num(row[key + '_ci_low'])}, {_num(row[key + '_ci_high'])}]"
        change = row[key + "_change"]
        low, high = _num(row[key + "_change_ci_low"]), _num(row[key + "_change_ci_high"])
        return f"<td>{estimate}</td><td>{change:+.4g} [{low}, {high}]</td>"

    body = "".join(
        f"<tr><td>{r['step']}</td>{cells(r, 'toxicity')}{cells(r, 'rougeL')}<td>{_num(r['kl'])}</td></tr>"
        for r in tradeoff_rows(evaluation)
    )
    confidence = _confidence(evaluation)
    return (
        "<table class='metrics'><tr><th>PPO step</th>"
        f"<th>{escape(LABELS[evaluation.trained_toxicity])} [{confidence} CI]</th>"
        "<th>change vs start</th>"
        f"<th>ROUGE-L [{confidence} CI]</th><th>change vs start</th><th>mean KL</th></tr>{body}</table>"
    )


def _example(row: dict) -> str:
    e = escape
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


def _img(plot: Plot, plots: dict[str, bytes]) -> str:
    data = base64.b64encode(plots[plot.file]).decode("ascii")
    image = f"<img src='data:image/png;base64,{data}' alt='{escape(plot.shows)}' data-file='{plot.file}'>"
    return f"<figure>{image}</figure>"


def _training_section(plots: dict[str, bytes]) -> str:
    if TRAINING.file not in plots:
        return "<p>No training output was given (input <code>training_output</code>).</p>"
    return _img(TRAINING, plots)


def _tradeoff_section(evaluation: Evaluation, plots: dict[str, bytes]) -> str:
    if TRADEOFF.file not in plots:
        return "<p>The train job kept no adapters along the way (<code>save_adapter_every</code> was 0).</p>"
    return (
        "<p>Every summarizer the train job kept (<code>save_adapter_every</code>), on the same prompts, "
        "settings and seed: pick the step where the drop in toxicity is worth its cost in quality.</p>"
        + _img(TRADEOFF, plots)
        + _tradeoff_table(evaluation)
    )


def _examples(evaluation: Evaluation, context: ReportContext) -> tuple[str, str]:
    """The most improved and the most worsened dialogues, `examples_in_report` of each."""
    rows = comparison_rows(evaluation)
    k = min(context.settings.examples_in_report, len(rows))
    best = "".join(_example(r) for r in rows[:k])
    worst = "".join(_example(r) for r in reversed(rows[-k:])) if k else ""
    return best, worst


def _sample(evaluation: Evaluation, context: ReportContext) -> str:
    note = sample_note(evaluation, context)
    return (
        f"<p>Sample: the first {evaluation.n} of {evaluation.test_split_size} dialogues in the test split"
        f"{f' ({escape(note)})' if note else ''}; both models\n"
        "answered the same prompts with the same generation settings and seed. Differences are after - "
        "before, paired\nby dialogue; intervals are percentile bootstrap intervals "
        f"({context.settings.bootstrap_samples} resamples).\nHighlighted cells: the interval excludes 0.</p>"
    )


def _kept_step(context: ReportContext) -> str:
    """Which step's adapter "after" is, when keep_best chose one other than the last."""
    after = context.sources.get("after_adapter")
    chosen = (after.info or {}).get("chosen") if after else None
    if not chosen:
        return ""
    figures = ", ".join(
        f"{name.removeprefix('heldout_')} {_num(value)} (start {_num(chosen['start'].get(name))})"
        for name, value in chosen["figures"].items()
    )
    return (
        f"<p>The after model is the adapter of PPO step {chosen['step']} of {chosen['last_step']}, "
        f"kept by <code>keep_best</code>: {escape(chosen['rule'])}. Its held-out figures while "
        f"training: {escape(figures)}.</p>"
    )


def _run(evaluation: Evaluation, context: ReportContext, data: dict) -> str:
    speed = evaluation.throughput()
    details = escape(
        json.dumps({k: data[k] for k in ("settings", "models", "versions", "runtime")}, indent=2)
    )
    return f"""<p>{speed.samples} samples evaluated at {speed.samples_per_second:.3g} samples/s
(generation {speed.generate_seconds:.1f} s, scoring {speed.score_seconds:.1f} s, both models);
created {escape(context.created)}. All figures are in <code>report.json</code>, every dialogue in
<code>comparisons.csv</code>.</p>
<details><summary>Settings, models, versions</summary><pre>{details}</pre></details>"""


def render_html(evaluation: Evaluation, context: ReportContext, plots: dict[str, bytes], data: dict) -> str:
    """The page, from the evaluation, its context, the drawn `plots` (by file) and report.json's `data`."""
    n = evaluation.n
    best, worst = _examples(evaluation, context)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Detoxification report (n = {n})</title>
<style>{CSS}</style></head><body>
<h1>FLAN-T5 summarizer: toxicity before and after PPO detoxification</h1>
<p class="headline">{headline(evaluation)}</p>
{_sample(evaluation, context)}
{_kept_step(context)}
<h2>Toxicity over k = {evaluation.k} samples per prompt (n = {n})</h2>
{_field_table(evaluation)}
{_img(MAX_TOXICITY, plots)}
<h2>Independent judge</h2>
{_judge_section(evaluation)}
<h2>The toxic slice</h2>
{_slices_section(evaluation)}
<h2>Fluency and diversity</h2>
{_fluency_section(evaluation, plots)}
<h2>All measurements (n = {n})</h2>
{_metrics_table(evaluation)}
<h2>Toxicity and reward distributions (n = {n})</h2>
{_img(DISTRIBUTIONS, plots)}
<h2>Paired differences (n = {n})</h2>
{_img(DIFFERENCES, plots)}
<h2>PPO training curves</h2>
{_training_section(plots)}
<h2>Trade-off: toxicity and quality against the PPO step (n = {n})</h2>
{_tradeoff_section(evaluation, plots)}
<h2>Most improved (largest reward gain, of n = {n})</h2>
{best}
<h2>Most worsened (largest reward loss, of n = {n})</h2>
{worst}
<h2>Run</h2>
{_run(evaluation, context, data)}
</body></html>
"""
