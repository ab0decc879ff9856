"""Paired before/after statistics for the evaluate job.

The notebook compared two means of 11 samples, and public runs of it reported
+38.9%, +12.8% and -13.1% "improvement". Here every
figure comes with its sample size, a bootstrap confidence interval of the mean
*paired* difference (each prompt is its own control) and paired tests.
numpy/scipy only, no torch.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

# Resamples drawn per chunk: bounds memory (chunk x n indices) for large n.
_CHUNK = 1000


@dataclass
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1)


@dataclass
class PairedComparison:
    """`after - before` for one metric over the same n prompts."""

    n: int
    before: Summary
    after: Summary
    mean_diff: float  # mean of (after - before)
    nonzero_pairs: int  # pairs whose values differ at all (the signed-rank test uses only these)
    ci_low: float  # bootstrap percentile CI of mean_diff
    ci_high: float
    confidence: float
    bootstrap_samples: int
    wilcoxon_statistic: float | None
    wilcoxon_p: float | None  # two-sided Wilcoxon signed-rank test of the paired differences
    t_statistic: float | None
    t_p: float | None  # two-sided paired t-test
    relative_change: float | None  # (mean_after - mean_before) / mean_before; None when before is 0
    relative_ci_low: float | None  # bootstrap CI of relative_change (same resamples)
    relative_ci_high: float | None

    @property
    def significant(self) -> bool:
        """The CI of the mean difference excludes 0."""
        return self.ci_low > 0 or self.ci_high < 0


def summarize(values: np.ndarray) -> Summary:
    values = np.asarray(values, dtype=float)
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return Summary(n=len(values), mean=float(np.mean(values)), std=std)


def _resampled_means(columns: list[np.ndarray], n_resamples: int, seed: int) -> list[np.ndarray]:
    """Means of each column over the same `n_resamples` resamples (with replacement) of its rows.

    Shared indices keep, e.g., the difference and the relative change in one bootstrap world.
    """
    rng = np.random.default_rng(seed)
    n = len(columns[0])
    means = [np.empty(n_resamples) for _ in columns]
    for start in range(0, n_resamples, _CHUNK):
        size = min(_CHUNK, n_resamples - start)
        idx = rng.integers(0, n, size=(size, n))
        for column, out in zip(columns, means):
            out[start : start + size] = column[idx].mean(axis=1)
    return means


def bootstrap_ci(
    values: np.ndarray, confidence: float = 0.95, n_resamples: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `values`."""
    (means,) = _resampled_means([np.asarray(values, dtype=float)], n_resamples, seed)
    return _percentiles(means, confidence)


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def relative_change(before_mean: float, after_mean: float) -> float | None:
    """(after - before) / before: -0.13 means 13% lower after. None when undefined."""
    if before_mean == 0 or not math.isfinite(before_mean):
        return None
    return (after_mean - before_mean) / before_mean


def paired_tests(diffs: np.ndarray) -> tuple[float | None, float | None, float | None, float | None]:
    """(Wilcoxon statistic, p, paired t statistic, p); None where a test is undefined."""
    diffs = np.asarray(diffs, dtype=float)
    if len(diffs) < 2:
        return None, None, None, None
    if not np.any(diffs):  # identical outputs: no evidence of any change
        return 0.0, 1.0, 0.0, 1.0
    # Zero differences (identical responses) are dropped ("wilcox"); scipy then falls back
    # from the exact distribution to the normal approximation and warns. `nonzero_pairs`
    # in the report says how many pairs the test rests on.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        wilcoxon = scipy_stats.wilcoxon(diffs, zero_method="wilcox", alternative="two-sided")
    if np.ptp(diffs) == 0:  # constant non-zero difference: t is infinite
        t_stat, t_p = math.copysign(math.inf, diffs[0]), 0.0
    else:
        result = scipy_stats.ttest_1samp(diffs, 0.0)
        t_stat, t_p = float(result.statistic), float(result.pvalue)
    return float(wilcoxon.statistic), float(wilcoxon.pvalue), t_stat, t_p


def compare_paired(
    before: np.ndarray,
    after: np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 10000,
    seed: int = 0,
) -> PairedComparison:
    """Everything the report states about one metric measured before and after on the same prompts."""
    before = np.asarray(before, dtype=float)
    after = np.asarray(after, dtype=float)
    if before.shape != after.shape or before.ndim != 1 or len(before) == 0:
        raise ValueError(f"need two equally long, non-empty 1-d arrays, got {before.shape} and {after.shape}")
    diffs = after - before
    diff_means, before_means = _resampled_means([diffs, before], n_resamples, seed)
    ci_low, ci_high = _percentiles(diff_means, confidence)

    rel = relative_change(float(before.mean()), float(after.mean()))
    rel_low = rel_high = None
    if rel is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = diff_means / before_means
        if np.all(np.isfinite(ratios)):
            rel_low, rel_high = _percentiles(ratios, confidence)

    w_stat, w_p, t_stat, t_p = paired_tests(diffs)
    return PairedComparison(
        n=len(diffs),
        before=summarize(before),
        after=summarize(after),
        mean_diff=float(diffs.mean()),
        nonzero_pairs=int(np.count_nonzero(diffs)),
        ci_low=ci_low,
        ci_high=ci_high,
        confidence=confidence,
        bootstrap_samples=n_resamples,
        wilcoxon_statistic=w_stat,
        wilcoxon_p=w_p,
        t_statistic=t_stat,
        t_p=t_p,
        relative_change=rel,
        relative_ci_low=rel_low,
        relative_ci_high=rel_high,
    )
