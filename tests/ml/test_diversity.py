"""Diversity over all samples: distinct-n and the share of duplicated samples."""

import pytest

from flan_t5_detox.ml.diversity import distinct_n, duplicate_share, measure_diversity


def test_distinct_n_counts_distinct_ngrams_over_all_texts():
    texts = ["a b a b", "A b c"]  # lower-cased: unigrams a b a b a b c -> {a, b, c}
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)  # ab ba ab | ab bc
    assert distinct_n(texts, 3) == pytest.approx(3 / 3)  # aba bab | abc
    assert distinct_n(["one"], 2) == 0.0 and distinct_n([], 1) == 0.0


def test_a_collapsed_policy_loses_diversity():
    varied = [[f"person {i} buys a {thing}" for thing in ("coat", "hat")] for i in range(5)]
    collapsed = [["#Person1# gets angry at #Person2#."] * 2 for _ in range(5)]
    a, b = measure_diversity(varied), measure_diversity(collapsed)
    assert a.samples == b.samples == 10
    assert a.duplicate_share == 0 and b.duplicate_share == 1
    assert all(b.distinct[n] < a.distinct[n] for n in (1, 2, 3))


def test_duplicate_share_counts_every_copy():
    assert duplicate_share(["x", "y", "x", "z"]) == pytest.approx(0.5)
    assert duplicate_share([]) == 0.0
