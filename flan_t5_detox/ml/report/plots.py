"""The report's plots as PNG, and `PLOTS`: the one registry of their file names, what each shows
and when a report has it. Every plot states the sample size it rests on."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from flan_t5_detox.ml.diversity import DISTINCT_N
from flan_t5_detox.ml.evaluation import JUDGE, MAX, PROBABILITY, TOXIC_THRESHOLD, Evaluation
from flan_t5_detox.ml.report.context import ReportContext
from flan_t5_detox.ml.report.tables import LABELS, tradeoff_rows
from flan_t5_detox.ml.report.training_output import TrainingCurves

PLOTTED = ("toxicity", "response_toxicity", "reward")  # the distributions and differences drawn
BEFORE_COLOR, AFTER_COLOR, DIFF_COLOR, GREY = "#1f77b4", "#ff7f0e", "#d62728", "#7f7f7f"


def _figure(ncols: int):
    # Figure without pyplot: no global state, no GUI backend, always Agg.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6 * ncols, 3.6), dpi=100, layout="constrained")
    return fig, fig.subplots(1, ncols)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _bins(n: int) -> int:
    """Histogram bins for n dialogues: about four dialogues a bin, 5 to 30 bins."""
    return min(30, max(5, n // 4))


def _floats(values) -> np.ndarray:
    """None (a non-finite value in JSON) as NaN, which matplotlib leaves out."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _per_metric(evaluation: Evaluation, draw: Callable) -> bytes:
    """One panel per PLOTTED metric, counting test dialogues; `draw(ax, name)` returns the panel's
    x label and title."""
    fig, axes = _figure(len(PLOTTED))
    for ax, name in zip(axes, PLOTTED):
        xlabel, title = draw(ax, name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test dialogues")
        ax.set_title(title)
        ax.legend(fontsize=8)
    return _png(fig)


def plot_distributions(evaluation: Evaluation) -> bytes:
    def draw(ax, name: str) -> tuple[str, str]:
        before, after = evaluation.before.values[name], evaluation.after.values[name]
        bins = np.histogram_bin_edges(np.concatenate([before, after]), bins=_bins(evaluation.n))
        ax.hist(before, bins=bins, alpha=0.55, color=BEFORE_COLOR, label=f"before (mean {before.mean():.4g})")
        ax.hist(after, bins=bins, alpha=0.55, color=AFTER_COLOR, label=f"after (mean {after.mean():.4g})")
        return LABELS[name], f"{LABELS[name]}, n = {evaluation.n}"

    return _per_metric(evaluation, draw)


def plot_differences(evaluation: Evaluation) -> bytes:
    def draw(ax, name: str) -> tuple[str, str]:
        comparison = evaluation.comparisons[name]
        diffs = evaluation.after.values[name] - evaluation.before.values[name]
        ax.hist(diffs, bins=_bins(evaluation.n), color=GREY, alpha=0.7)
        ax.axvspan(comparison.ci_low, comparison.ci_high, color=DIFF_COLOR, alpha=0.2, label="CI of mean")
        ax.axvline(comparison.mean_diff, color=DIFF_COLOR, label=f"mean {comparison.mean_diff:+.4g}")
        ax.axvline(0, color="black", linewidth=0.8, linestyle="--")
        return f"{LABELS[name]}: after - before", f"Paired differences, n = {evaluation.n}"

    return _per_metric(evaluation, draw)


def plot_training(curves: TrainingCurves) -> bytes:
    fig, (ax_reward, ax_kl) = _figure(2)
    step = np.array(curves.step)
    mean, std, kl = _floats(curves.reward_mean), _floats(curves.reward_std), _floats(curves.kl)
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
        (ax_tox, "toxicity", DIFF_COLOR, LABELS[evaluation.trained_toxicity] + " (mean)"),
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
    for key, style, label in (
        ("max_toxicity_mean", ":", "expected maximum"),
        ("judge_toxicity_mean", "-.", "judge"),
    ):
        values = _floats(r[key] for r in rows)
        if np.isfinite(values).any():
            ax_tox.plot(step, values, linestyle=style, marker=".", color=DIFF_COLOR, alpha=0.6, label=label)
    ax_tox.legend(fontsize=8)
    kl = _floats(r["kl"] for r in rows)
    if np.isfinite(kl).any():
        twin = ax_rouge.twinx()
        twin.plot(step, kl, linestyle="--", marker="x", color=GREY)
        twin.set_ylabel("mean KL at that step (nats)", color=GREY)
    return _png(fig)


def plot_max_toxicity(evaluation: Evaluation) -> bytes:
    """Per prompt, the highest toxicity of its k samples, before and after (the tail the field
    measures), one panel per judge of what the reward read (the reward model, and the judge); then
    the toxicity probability of each."""
    names = [evaluation.trained_toxicity] + ([evaluation.judged_toxicity] if evaluation.judged else [])
    fig, axes = _figure(len(names) + 1)
    bins = np.linspace(0, 1, 21)
    for ax, name in zip(axes, names):
        before, after = evaluation.before.values[name + MAX], evaluation.after.values[name + MAX]
        ax.hist(before, bins=bins, alpha=0.55, color=BEFORE_COLOR, label=f"before (mean {before.mean():.3g})")
        ax.hist(after, bins=bins, alpha=0.55, color=AFTER_COLOR, label=f"after (mean {after.mean():.3g})")
        ax.axvline(TOXIC_THRESHOLD, color="black", linewidth=0.8, linestyle="--", label="toxic from here")
        ax.set_xlabel(f"highest of k = {evaluation.k} samples")
        ax.set_ylabel("test dialogues")
        ax.set_title(f"{LABELS[name + MAX]}, n = {evaluation.n}", fontsize=8)
        ax.legend(fontsize=8)
    ax = axes[-1]
    x = np.arange(len(names))
    for offset, side, color in ((-0.2, "before", BEFORE_COLOR), (0.2, "after", AFTER_COLOR)):
        shares = [getattr(evaluation.comparisons[name + PROBABILITY], side).mean for name in names]
        ax.bar(x + offset, shares, width=0.4, color=color, label=side)
    ax.set_xticks(x, ["judge" if name.startswith(JUDGE) else "reward model" for name in names])
    ax.set_ylabel(f"share of prompts with a sample >= {TOXIC_THRESHOLD}")
    ax.set_title(f"Toxicity probability, n = {evaluation.n}, k = {evaluation.k}", fontsize=9)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_fluency(evaluation: Evaluation) -> bytes:
    """Distinct-n over all samples, and each dialogue's perplexity under the starting summarizer."""
    fig, (ax_distinct, ax_ppl) = _figure(2)
    x = np.arange(len(DISTINCT_N))
    for offset, side, color in ((-0.2, "before", BEFORE_COLOR), (0.2, "after", AFTER_COLOR)):
        diversity = evaluation.diversity[side]
        values = [diversity.distinct[n] for n in DISTINCT_N]
        ax_distinct.bar(
            x + offset, values, width=0.4, color=color, label=f"{side} ({diversity.samples} samples)"
        )
    ax_distinct.set_xticks(x, [f"distinct-{n}" for n in DISTINCT_N])
    ax_distinct.set_ylim(0, 1)
    ax_distinct.set_title(f"Diversity over all samples, n = {evaluation.n} x k = {evaluation.k}", fontsize=9)
    ax_distinct.legend(fontsize=8)
    before, after = evaluation.before.values["perplexity"], evaluation.after.values["perplexity"]
    bins = np.histogram_bin_edges(np.log(np.concatenate([before, after])), bins=_bins(evaluation.n))
    ax_ppl.hist(
        np.log(before), bins=bins, alpha=0.55, color=BEFORE_COLOR, label=f"before (mean {before.mean():.3g})"
    )
    ax_ppl.hist(
        np.log(after), bins=bins, alpha=0.55, color=AFTER_COLOR, label=f"after (mean {after.mean():.3g})"
    )
    ax_ppl.set_xlabel("log perplexity under the starting summarizer (mean of the k samples)")
    ax_ppl.set_ylabel("test dialogues")
    ax_ppl.set_title(f"Fluency, n = {evaluation.n}", fontsize=9)
    ax_ppl.legend(fontsize=8)
    return _png(fig)


def _always(evaluation: Evaluation, context: ReportContext) -> bool:
    return True


@dataclass(frozen=True)
class Plot:
    """One plot of the report: its file, what it shows (the page's alt text), how it is drawn and
    whether this report has it."""

    file: str
    shows: str
    draw: Callable[[Evaluation, ReportContext], bytes]
    drawn: Callable[[Evaluation, ReportContext], bool] = _always


DISTRIBUTIONS = Plot(
    "toxicity_distribution.png",
    "toxicity and reward before vs after",
    lambda evaluation, context: plot_distributions(evaluation),
)
DIFFERENCES = Plot(
    "paired_differences.png",
    "per-dialogue differences after - before",
    lambda evaluation, context: plot_differences(evaluation),
)
MAX_TOXICITY = Plot(
    "max_toxicity_distribution.png",
    "per-prompt maximum toxicity over k samples, before vs after",
    lambda evaluation, context: plot_max_toxicity(evaluation),
)
FLUENCY = Plot(
    "fluency_diversity.png",
    "distinct-n and perplexity under the starting summarizer, before vs after",
    lambda evaluation, context: plot_fluency(evaluation),
    drawn=lambda evaluation, context: bool(evaluation.diversity),
)
TRAINING = Plot(
    "training_curves.png",
    "PPO reward and KL per step",
    lambda evaluation, context: plot_training(context.training),
    drawn=lambda evaluation, context: context.training is not None,  # input training_output given
)
TRADEOFF = Plot(
    "tradeoff.png",
    "toxicity and ROUGE-L against the PPO step",
    lambda evaluation, context: plot_tradeoff(evaluation),
    drawn=lambda evaluation, context: bool(evaluation.curve),  # the train job kept adapters
)
PLOTS = (MAX_TOXICITY, FLUENCY, DISTRIBUTIONS, DIFFERENCES, TRAINING, TRADEOFF)  # in the page's order
PLOT_FILES = tuple(plot.file for plot in PLOTS)


def draw_plots(evaluation: Evaluation, context: ReportContext) -> dict[str, bytes]:
    """The PNG of every plot this report has, by file name, in the page's order."""
    return {plot.file: plot.draw(evaluation, context) for plot in PLOTS if plot.drawn(evaluation, context)}
