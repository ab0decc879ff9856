"""Where the reward's variance over a batch comes from: the query or the response.

    python -m bench.reward_input        # the embedded default (the shipped files)

For each test prompt (at most 64) the starting summarizer samples 8 responses (the rollout's own
sampling). Each pair is scored on both reward inputs. The reward's variance over all pairs
splits into the variance of the per-query means (what the query decides: the policy cannot
change it, so in the advantages it is noise) and the mean variance within a query (what the
response decides: the signal PPO learns from). Shares are of the total; the between-query part
is corrected for the within-query noise in the means (one-way random-effects ANOVA).
"""

from __future__ import annotations

import json

import numpy as np
import torch

from flan_t5_detox.fixtures import SAMPLE_DATASET
from flan_t5_detox.fixtures.embedded import embedded_default
from flan_t5_detox.ml import data, generation
from flan_t5_detox.ml.adapters import load_merged
from flan_t5_detox.ml.loading import load_tokenizer
from flan_t5_detox.ml.rewards import RewardModel, reward_text

from .common import command_line

QUERIES, RESPONSES = 64, 8


def variance_shares(rewards: np.ndarray) -> dict[str, float]:
    """`rewards` is (queries, responses per query): shares of the variance from each."""
    m = rewards.shape[1]
    within = float(rewards.var(axis=1, ddof=1).mean())
    between = max(float(rewards.mean(axis=1).var(ddof=1)) - within / m, 0.0)
    total = between + within
    return {
        "query_share": round(between / total, 4) if total else 0.0,
        "response_share": round(within / total, 4) if total else 0.0,
        "sd": round(float(np.sqrt(total)), 4),
    }


def main(argv=None) -> None:
    command_line("reward_input", __doc__).parse_args(argv)
    models = embedded_default()
    torch.set_num_threads(1)
    tokenizer = load_tokenizer(models.base_model)
    policy = load_merged(models.base_model, models.peft_checkpoint)
    reward_model = RewardModel(models.reward_model)  # the reward input is chosen per call below
    test = data.prepare_splits(data.read_records(SAMPLE_DATASET), 200, 1000, 0.2).test[:QUERIES]
    queries = [torch.tensor(ids) for ids in tokenizer([e.prompt for e in test], truncation=True).input_ids]
    torch.manual_seed(0)
    rows = [q for q in queries for _ in range(RESPONSES)]
    responses = generation.generate(
        policy, tokenizer, rows, [60] * len(rows), generation.SamplingSettings(), 64
    )
    texts = generation.detokenize(tokenizer, responses)
    prompts = [e.prompt for e in test for _ in range(RESPONSES)]
    result = {"queries": len(test), "responses_per_query": RESPONSES}
    for reward_input in ("query_response", "response"):
        scores = reward_model.score([reward_text(p, r, reward_input) for p, r in zip(prompts, texts)])
        rewards = scores.reward.numpy().reshape(len(test), RESPONSES)
        result[reward_input] = variance_shares(rewards)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
