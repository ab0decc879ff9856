"""The trade-off curve: every summarizer the train job kept along the way (and the start and the
end), measured on the evaluate job's prompts, settings and seed, each against the start."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flan_t5_detox.contract.settings import EvalConfig
from flan_t5_detox.ml.evaluation import JUDGE, MAX, Evaluation, Side
from flan_t5_detox.ml.stats import PairedComparison, bootstrap_ci, compare_paired


@dataclass
class Estimate:
    mean: float
    ci_low: float
    ci_high: float


def estimate(values: np.ndarray, config: EvalConfig) -> Estimate:
    low, high = bootstrap_ci(values, config.confidence, config.bootstrap_samples, config.seed)
    return Estimate(float(np.mean(values)), low, high)


@dataclass
class CurvePoint:
    """One model on the trade-off curve: the summarizer after `step` PPO steps (0 = the start)."""

    step: int
    toxicity: Estimate  # of what the reward read (`Evaluation.trained_toxicity`)
    rouge_l: Estimate
    toxicity_change: PairedComparison  # against the starting summarizer, same prompts
    rouge_l_change: PairedComparison
    kl: float | None  # the train job's mean KL at that step (metrics.jsonl), if given
    max_toxicity: Estimate | None = None  # expected maximum toxicity over the k samples
    judge_toxicity: Estimate | None = None  # the judge's toxicity of what the reward read


def tradeoff_curve(
    evaluation: Evaluation,
    steps: dict[int, Side],
    final_step: int,
    config: EvalConfig,
    kl_by_step: dict[int, float | None] | None = None,
) -> list[CurvePoint]:
    """Toxicity and ROUGE-L of every evaluated step's summarizer, each against the start.

    `steps` holds the sides of the kept adapters (same prompts, settings and seed as the
    evaluation's); the start is `evaluation.before` and step `final_step` its `after`."""
    kl_by_step = kl_by_step or {}
    sides = {0: evaluation.before, **steps, final_step: evaluation.after}
    metric, start = evaluation.trained_toxicity, evaluation.before.values
    judge = JUDGE + metric

    def change(before: np.ndarray, after: np.ndarray) -> PairedComparison:
        return compare_paired(before, after, config.confidence, config.bootstrap_samples, config.seed)

    points = []
    for step, side in sorted(sides.items()):
        values = side.values
        points.append(
            CurvePoint(
                step=step,
                toxicity=estimate(values[metric], config),
                rouge_l=estimate(values["rougeL"], config),
                toxicity_change=change(start[metric], values[metric]),
                rouge_l_change=change(start["rougeL"], values["rougeL"]),
                kl=0.0 if step == 0 else kl_by_step.get(step),
                max_toxicity=estimate(values[metric + MAX], config),
                judge_toxicity=estimate(values[judge], config) if judge in values else None,
            )
        )
    return points
