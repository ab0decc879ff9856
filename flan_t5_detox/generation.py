"""Batched sampling of summaries, with each response trimmed after its first EOS.

Defects fixed here (DESIGN §4): the notebook generates one prompt at a time
(defect 4), and trl 0.4.x's batched seq2seq generation keeps the pad tokens
after EOS, which then count as response tokens in the PPO step (defect 2).

Each prompt gets its own token budget (the notebook draws max_new_tokens from
100..400 per prompt). One batched call generates up to the largest budget and
each row is then cut to its own: sampling a token depends only on the prefix,
so this is the same distribution as generating each prompt with its own cap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SamplingSettings:
    min_length: int = 5
    top_k: int = 0
    top_p: float = 1.0


class LengthSampler:
    """Draws max_new_tokens uniformly from [low, high) like trl's LengthSampler, but seeded."""

    def __init__(self, low: int, high: int, seed: int):
        self.low, self.high = low, max(high, low + 1)
        self.rng = np.random.RandomState(seed)

    def sample(self, n: int) -> list[int]:
        return self.rng.randint(self.low, self.high, size=n).tolist()


def trim_response(row: torch.Tensor, eos_token_id: int, budget: int) -> torch.Tensor:
    """Keep the decoder start token, then tokens up to and including the first EOS, at most `budget`."""
    body = row[1 : 1 + budget]
    eos = (body == eos_token_id).nonzero()
    if len(eos):
        body = body[: int(eos[0]) + 1]
    return torch.cat([row[:1], body])


@torch.no_grad()
def generate(
    model,
    tokenizer,
    queries: list[torch.Tensor],
    budgets: list[int],
    settings: SamplingSettings,
    batch_size: int = 0,
) -> list[torch.Tensor]:
    """Sample one response per query (decoder start token first), in batches of `batch_size` (0 = all)."""
    batch_size = batch_size or len(queries)
    responses: list[torch.Tensor] = []
    for start in range(0, len(queries), batch_size):
        chunk = queries[start : start + batch_size]
        chunk_budgets = budgets[start : start + batch_size]
        encoded = tokenizer.pad({"input_ids": [q.tolist() for q in chunk]}, return_tensors="pt")
        output = model.generate(
            input_ids=encoded["input_ids"],
            attention_mask=encoded["attention_mask"],
            max_new_tokens=max(chunk_budgets),
            min_length=settings.min_length,
            top_k=settings.top_k,
            top_p=settings.top_p,
            do_sample=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        responses.extend(
            trim_response(row, tokenizer.eos_token_id, budget) for row, budget in zip(output, chunk_budgets)
        )
    return responses


def decode(tokenizer, responses: list[torch.Tensor]) -> list[str]:
    return tokenizer.batch_decode([r.tolist() for r in responses], skip_special_tokens=True)
