"""The report's figures as data: report.json's content, and the rows of comparisons.csv and
tradeoff.csv."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

from flan_t5_detox.ml.evaluation import JUDGE, MAX, PROBABILITY, TOXIC_THRESHOLD, Evaluation
from flan_t5_detox.ml.report.context import ReportContext, json_safe
from flan_t5_detox.ml.stats import PairedComparison
from flan_t5_detox.ml.tradeoff import Estimate

REPORT_JSON = "report.json"
COMPARISONS_CSV = "comparisons.csv"
TRADEOFF_CSV = "tradeoff.csv"

# What each per-dialogue figure (`Side.values`) is, in the words of the tables and plots.
MEASURES = {
    "toxicity": "Toxicity of prompt + response (P(hate))",
    "response_toxicity": "Toxicity of the response alone (P(hate))",
    "reward": "Reward (nothate logit of what the reward reads)",
    "rouge1": "ROUGE-1 F1",
    "rouge2": "ROUGE-2 F1",
    "rougeL": "ROUGE-L F1",
    "length": "Response length (tokens)",
    "perplexity": "Perplexity under the starting summarizer",
    JUDGE + "toxicity": "Toxicity of prompt + response, by the judge (P(toxic))",
    JUDGE + "response_toxicity": "Toxicity of the response alone, by the judge (P(toxic))",
}


def _lower_first(label: str) -> str:
    return label[:1].lower() + label[1:]


TOXICITY_NAMES = ("toxicity", "response_toxicity", JUDGE + "toxicity", JUDGE + "response_toxicity")
LABELS = {
    **MEASURES,
    **{name + MAX: "Expected maximum " + _lower_first(MEASURES[name]) for name in TOXICITY_NAMES},
    **{
        name + PROBABILITY: f"Toxicity probability (any sample >= {TOXIC_THRESHOLD}), "
        + _lower_first(MEASURES[name])
        for name in TOXICITY_NAMES
    },
}


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


def verdict(evaluation: Evaluation) -> dict:
    """The figures a quality gate reads (e.g. the native pipeline's ConditionStep, by JsonGet on
    `verdict.*`): the paired difference of the toxicity PPO lowered, and of ROUGE-L, with their CIs.
    A gate passes when `toxicity_diff_ci_high < 0` (significant detoxification) and
    `rouge_l_diff_ci_low > -max_rouge_drop` (summaries kept)."""
    tox = evaluation.comparisons[evaluation.judged_toxicity]
    rouge = evaluation.comparisons["rougeL"]
    return {
        "toxicity_metric": evaluation.judged_toxicity,
        "toxicity_judge": "judge" if evaluation.judged else "reward_model",
        "reward_hack_suspected": evaluation.reward_hack_suspected,
        "toxicity_diff": tox.mean_diff,
        "toxicity_diff_ci_low": tox.ci_low,
        "toxicity_diff_ci_high": tox.ci_high,
        "toxicity_t_p": tox.t_p,
        "rouge_l_diff": rouge.mean_diff,
        "rouge_l_diff_ci_low": rouge.ci_low,
        "rouge_l_diff_ci_high": rouge.ci_high,
        "sample_size": evaluation.n,
    }


def report_data(evaluation: Evaluation, context: ReportContext, files: list[str]) -> dict:
    """report.json: every figure and how it was made; `files` are the report's other files."""
    comparisons = {name: dataclasses.asdict(c) for name, c in evaluation.comparisons.items()}
    return json_safe(
        {
            "sample_size": evaluation.n,
            "test_split_size": evaluation.test_split_size,
            "sample_note": sample_note(evaluation, context),
            "difference": "after - before, paired by test dialogue",
            "reward_input": evaluation.reward_input,
            "headline_metric": evaluation.trained_toxicity,
            "verdict": verdict(evaluation),
            "toxicity_relative_improvement": {
                **toxicity_improvement(evaluation.comparisons[evaluation.trained_toxicity]),
                "metric": evaluation.trained_toxicity,
                "definition": "(mean_before - mean_after) / mean_before; CI from the same bootstrap",
                "sample_size": evaluation.n,
            },
            "samples_per_prompt": evaluation.k,
            "toxic_threshold": TOXIC_THRESHOLD,
            "judged": evaluation.judged,
            "reward_hack_suspected": evaluation.reward_hack_suspected,
            "metrics": comparisons,
            "field_figures": {
                name: {figure: _paired(c) for figure, c in figures.items()}
                for name, figures in field_figures(evaluation).items()
            },
            "diversity": {side: dataclasses.asdict(d) for side, d in evaluation.diversity.items()},
            "slices": [dataclasses.asdict(s) for s in evaluation.slices],
            "throughput": dataclasses.asdict(evaluation.throughput()),
            "settings": dataclasses.asdict(context.settings),
            "models": {name: dataclasses.asdict(source) for name, source in context.sources.items()},
            "versions": context.versions,
            "runtime": context.runtime,
            "training": dataclasses.asdict(context.training) if context.training else None,
            "training_summary": context.training_summary.to_json() if context.training_summary else None,
            "created": context.created,
            "tradeoff": [dataclasses.asdict(point) for point in evaluation.curve],
            "files": list(files),
        }
    )


def _paired(c: PairedComparison) -> dict:
    return {
        "before": c.before.mean,
        "after": c.after.mean,
        "difference": c.mean_diff,
        "ci_low": c.ci_low,
        "ci_high": c.ci_high,
        "t_p": c.t_p,
        "n": c.n,
    }


# The field's figures of a toxicity over k samples per prompt, and the suffix of each one's name.
FIELD_FIGURES = {"mean": "", "expected_maximum": MAX, "probability": PROBABILITY}


def field_figures(evaluation: Evaluation) -> dict[str, dict[str, PairedComparison]]:
    """Each measured toxicity's field figures (mean, expected maximum, toxicity probability)."""
    c = evaluation.comparisons
    return {
        name: {figure: c[name + suffix] for figure, suffix in FIELD_FIGURES.items()}
        for name in TOXICITY_NAMES
        if name in c
    }


def _with_change(prefix: str, estimate: Estimate, change: PairedComparison) -> dict:
    """A curve point's columns for one metric: its estimate, and its change against the start."""
    return {
        f"{prefix}_mean": estimate.mean,
        f"{prefix}_ci_low": estimate.ci_low,
        f"{prefix}_ci_high": estimate.ci_high,
        f"{prefix}_change": change.mean_diff,
        f"{prefix}_change_ci_low": change.ci_low,
        f"{prefix}_change_ci_high": change.ci_high,
    }


def tradeoff_rows(evaluation: Evaluation) -> list[dict]:
    """One row per evaluated step: toxicity (of what the reward read), ROUGE-L, KL."""
    return [
        {
            "step": point.step,
            **_with_change("toxicity", point.toxicity, point.toxicity_change),
            **_with_change("rougeL", point.rouge_l, point.rouge_l_change),
            "kl": point.kl,
            "max_toxicity_mean": point.max_toxicity.mean if point.max_toxicity else None,
            "judge_toxicity_mean": point.judge_toxicity.mean if point.judge_toxicity else None,
        }
        for point in evaluation.curve
    ]


# Per-dialogue figures comparisons.csv gives besides the first sample's (when measured).
FIGURES_PER_ROW = (
    "response_toxicity_max",
    "toxicity_max",
    "perplexity",
    JUDGE + "response_toxicity",
    JUDGE + "response_toxicity_max",
)


def comparison_rows(evaluation: Evaluation) -> list[dict]:
    """One row per test dialogue, sorted by reward_diff descending (the notebook's table)."""
    before, after = evaluation.before.values, evaluation.after.values
    rows = []
    for i, example in enumerate(evaluation.examples):
        rows.append(
            {
                "id": example.id,
                "query": example.prompt,
                "reference_summary": example.summary,
                "response_before": evaluation.before.responses[i],
                "response_after": evaluation.after.responses[i],
                "reward_before": float(before["reward"][i]),
                "reward_after": float(after["reward"][i]),
                "reward_diff": float(after["reward"][i] - before["reward"][i]),
                "toxicity_before": float(before["toxicity"][i]),
                "toxicity_after": float(after["toxicity"][i]),
                "toxicity_diff": float(after["toxicity"][i] - before["toxicity"][i]),
                "response_toxicity_before": float(before["response_toxicity"][i]),
                "response_toxicity_after": float(after["response_toxicity"][i]),
                **{
                    f"{name}_{side}": float(values[name][i])
                    for name in FIGURES_PER_ROW
                    if name in before
                    for side, values in (("before", before), ("after", after))
                },
                "samples": evaluation.k,
            }
        )
    return sorted(rows, key=lambda row: -row["reward_diff"])  # stable: ties keep test order


def write_csv(path: Path, rows: list[dict]) -> None:
    """`rows` as CSV, the first row's keys as the header."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
