"""Paired statistics against answers known by construction or by theory."""

import math

import numpy as np
import pytest
from scipy.stats import t as student_t

from flan_t5_detox.ml.stats import bootstrap_ci, compare_paired, relative_change


def test_constructed_case_with_a_known_mean_difference():
    n = 40
    before = np.linspace(0.1, 0.5, n)
    noise = np.tile([0.05, -0.05], n // 2)  # sums to exactly zero
    after = before - 0.1 + noise

    result = compare_paired(before, after, confidence=0.95, n_resamples=5000, seed=1)

    assert result.n == n
    assert result.mean_diff == pytest.approx(-0.1, abs=1e-12)
    assert result.ci_low < -0.1 < result.ci_high
    assert result.ci_high < 0 and result.significant
    # The bootstrap standard error of the mean difference is sd/sqrt(n) ~ 0.0079: the
    # 95% interval is about +-1.96 of that.
    assert result.ci_high - result.ci_low == pytest.approx(2 * 1.96 * 0.05 / math.sqrt(n), rel=0.1)
    assert result.before.mean == pytest.approx(0.3)
    assert result.after.mean == pytest.approx(0.2)
    assert result.before.std == pytest.approx(np.std(before, ddof=1))
    assert result.relative_change == pytest.approx(-1 / 3)
    assert result.relative_ci_low < -1 / 3 < result.relative_ci_high < 0

    # Paired t by hand: mean / (sd / sqrt(n)).
    sd = 0.05 * math.sqrt(n / (n - 1))
    assert result.t_statistic == pytest.approx(-0.1 / (sd / math.sqrt(n)))
    assert result.t_p == pytest.approx(2 * student_t.sf(abs(result.t_statistic), df=n - 1))
    assert result.wilcoxon_p < 1e-6


def test_wilcoxon_exact_answer_when_every_difference_is_positive():
    before = np.zeros(10)
    after = np.arange(1, 11) / 10.0  # ten distinct positive differences
    result = compare_paired(before, after, n_resamples=200)
    # Exact null distribution: only 1 of 2**10 sign patterns is as extreme on each side.
    assert result.wilcoxon_p == pytest.approx(2 / 2**10)
    assert result.wilcoxon_statistic == 0
    assert result.relative_change is None  # before mean is 0: a ratio would be meaningless
    assert result.relative_ci_low is None


def test_identical_outputs_show_no_change():
    values = np.array([0.2, 0.4, 0.1, 0.9])
    result = compare_paired(values, values.copy(), n_resamples=500)
    assert result.mean_diff == 0 and (result.ci_low, result.ci_high) == (0, 0)
    assert result.wilcoxon_p == 1 and result.t_p == 1
    assert not result.significant
    assert result.relative_change == 0


@pytest.mark.parametrize("confidence", [0.95, 0.80])
def test_ci_covers_the_true_mean_at_the_stated_rate(confidence):
    """Repeated simulations with a fixed seed: the interval holds the true mean ~`confidence` of the time."""
    rng = np.random.default_rng(123)
    true_diff, n, trials = 0.3, 40, 400
    hits = 0
    for trial in range(trials):
        before = rng.normal(1.0, 1.0, n)
        after = before + true_diff + rng.standard_t(5, n)  # heavy-ish tails, still mean 0 noise
        low, high = bootstrap_ci(after - before, confidence, n_resamples=1000, seed=trial)
        hits += low <= true_diff <= high
    coverage = hits / trials
    # Percentile bootstrap under-covers slightly at n=40; 400 trials give a standard error ~0.011-0.02.
    assert confidence - 0.06 <= coverage <= confidence + 0.03, coverage


def test_relative_change_and_bad_shapes():
    assert relative_change(0.04, 0.03) == pytest.approx(-0.25)
    assert relative_change(0.0, 0.1) is None
    with pytest.raises(ValueError):
        compare_paired(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError):
        compare_paired(np.zeros(0), np.zeros(0))
