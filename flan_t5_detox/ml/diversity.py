"""Diversity of a model's summaries, over all its samples: a policy that collapses to a few safe
phrases keeps its ROUGE against one reference but loses here.

- distinct-n: distinct n-grams / all n-grams, over every sample of every prompt (DExperts' measure),
  on lower-cased whitespace tokens;
- duplicate share: the share of samples whose text equals another sample's (of any prompt).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

DISTINCT_N = (1, 2, 3)


@dataclass
class Diversity:
    samples: int
    distinct: dict[int, float]  # n -> distinct-n
    duplicate_share: float


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of `texts` (0 when there are none)."""
    grams: list[tuple[str, ...]] = []
    for text in texts:
        words = text.lower().split()
        grams += [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def duplicate_share(texts: list[str]) -> float:
    """The share of texts equal to at least one other text."""
    counts = Counter(texts)
    return sum(c for c in counts.values() if c > 1) / len(texts) if texts else 0.0


def measure_diversity(texts_per_prompt: list[list[str]]) -> Diversity:
    texts = [text for texts in texts_per_prompt for text in texts]
    return Diversity(len(texts), {n: distinct_n(texts, n) for n in DISTINCT_N}, duplicate_share(texts))
