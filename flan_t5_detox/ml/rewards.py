"""The reward model: a sequence classifier whose rewarded class is chosen by label name.

Reward = the raw logit of `reward_label` (default `nothate`), as in the notebook.
Toxicity = the softmax probability of `toxic_label` (default `hate`), the
semantics of the `evaluate` library's "toxicity" measurement.

What the classifier reads for a rollout is `reward_text(query, response, reward_input)`, the one
rule that training, evaluation, tests and benchmarks share. When that text is longer than the
classifier's window its start is dropped, so the response is always read whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.contract.settings import REWARD_INPUTS
from flan_t5_detox.ml.loading import load_classifier, load_tokenizer

# Maps (query texts, response texts) to one reward each.
RewardFn = Callable[[list[str], list[str]], torch.Tensor]


def reward_text(query: str, response: str, reward_input: str = "query_response") -> str:
    """The text the reward model scores for one rollout: the prompt, then the response (the lab
    notebook's rule, `query_response`), or the response alone (`response`)."""
    if reward_input == "response":
        return response
    if reward_input == "query_response":
        return query + " " + response
    raise ValueError(f"reward_input must be one of {REWARD_INPUTS}, got {reward_input!r}")


def label_index(id2label: dict, name: str, what: str = "reward model") -> int:
    for index, label in id2label.items():
        if str(label).lower() == name.lower():
            return int(index)
    raise JobInputError(
        f"the {what} has no label {name!r}; its labels are {sorted(map(str, id2label.values()))}"
    )


@dataclass
class Scores:
    reward: torch.Tensor  # logit of the rewarded label, shape (n,)
    probabilities: torch.Tensor  # softmax over labels, shape (n, num_labels)


class RewardModel:
    def __init__(
        self,
        path_or_name: str | Path,
        reward_label: str = "nothate",
        reward_input: str = "query_response",
        batch_size: int = 16,
        batch_tokens: int = 4096,
        role: str = "reward model",  # what errors call it (e.g. "judge")
    ):
        self.role = role
        self.tokenizer = load_tokenizer(path_or_name, role)
        self.model = load_classifier(path_or_name, role)
        # Judge the response: when query + response exceed the window, drop the
        # start of the query rather than the end of the response.
        self.tokenizer.truncation_side = "left"
        self.model.eval()
        self.id2label = dict(self.model.config.id2label)
        self.reward_index = label_index(self.id2label, reward_label, role)
        self.reward_input = reward_input
        self.batch_size, self.batch_tokens = batch_size, batch_tokens

    def index_of(self, label: str) -> int:
        return label_index(self.id2label, label, self.role)

    @torch.no_grad()
    def score(self, texts: list[str]) -> Scores:
        """Logits for every text, truncated to the classifier's window.

        Texts are batched by length (at most `batch_size` texts and `batch_tokens` padded
        tokens per batch), so little of the work is padding; results are in the input order."""
        ids = self.tokenizer(texts, truncation=True)["input_ids"] if texts else []
        logits = torch.zeros(len(texts), len(self.id2label))
        for rows in length_batches([len(i) for i in ids], self.batch_size, self.batch_tokens):
            enc = self.tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt")
            logits[rows] = self.model(**enc).logits.float()
        return Scores(reward=logits[:, self.reward_index], probabilities=logits.softmax(dim=-1))

    def rewards(self, queries: list[str], responses: list[str]) -> torch.Tensor:
        """The reward of each rollout (a `RewardFn`), on what `reward_input` says it reads."""
        return self.score([reward_text(q, r, self.reward_input) for q, r in zip(queries, responses)]).reward


def length_batches(lengths: list[int], batch_size: int, batch_tokens: int) -> list[list[int]]:
    """Indices grouped shortest first; a batch closes when one more row would exceed `batch_size`
    rows or `batch_tokens` once padded to its longest row (a longer row always gets a batch)."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        rows = batches[-1] if batches else None
        if rows is None or len(rows) >= batch_size or (len(rows) + 1) * lengths[i] > batch_tokens:
            batches.append([i])
        else:
            rows.append(i)
    return batches
