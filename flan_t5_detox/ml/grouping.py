"""Rows of similar length run together: runs of at most N rows whose padding is a bounded share
of their real tokens. Used for the PPO passes (query and response lengths) and the encoder
(query lengths alone)."""

from __future__ import annotations

# A group may carry this much padding: a separate forward pass costs a fixed overhead and
# slightly smaller GEMMs, a padded token its full share of the work.
GROUP_PADDING = 0.1


def length_groups(
    lengths: list[tuple[int, int]], max_rows: int, padding: float = GROUP_PADDING
) -> list[list[int]]:
    """Consecutive runs of `lengths` ((query, response) tokens, sorted by response length), each
    run at most `max_rows` long and padded to its longest query and response by at most
    `padding` of its real tokens. Returns the index lists."""
    groups: list[list[int]] = []
    for i in range(len(lengths)):
        rows = groups[-1] + [i] if groups else []
        if rows and len(rows) <= max_rows and _padded(lengths, rows) <= (1 + padding) * _real(lengths, rows):
            groups[-1] = rows
        else:
            groups.append([i])
    return groups


def _padded(lengths: list[tuple[int, int]], rows: list[int]) -> int:
    return len(rows) * (max(lengths[j][0] for j in rows) + max(lengths[j][1] for j in rows))


def _real(lengths: list[tuple[int, int]], rows: list[int]) -> int:
    return sum(lengths[j][0] + lengths[j][1] for j in rows)
