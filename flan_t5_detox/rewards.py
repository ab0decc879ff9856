"""The reward model: a sequence classifier whose rewarded class is chosen by label name.

Reward = the raw logit of `reward_label` (default `nothate`), as in the notebook.
Toxicity = the softmax probability of `toxic_label` (default `hate`), the
semantics of the `evaluate` library's "toxicity" measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from .contract import JobInputError


def label_index(id2label: dict, name: str) -> int:
    for index, label in id2label.items():
        if str(label).lower() == name.lower():
            return int(index)
    raise JobInputError(
        f"the reward model has no label {name!r}; its labels are {sorted(map(str, id2label.values()))}"
    )


@dataclass
class Scores:
    reward: torch.Tensor  # logit of the rewarded label, shape (n,)
    probabilities: torch.Tensor  # softmax over labels, shape (n, num_labels)


class RewardModel:
    def __init__(self, path_or_name: str | Path, reward_label: str = "nothate", batch_size: int = 16):
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path_or_name))
            self.model = AutoModelForSequenceClassification.from_pretrained(str(path_or_name))
        except (OSError, ValueError) as exc:
            raise JobInputError(f"cannot load the reward model from {path_or_name}: {exc}") from exc
        # Judge the response: when query + response exceed the window, drop the
        # start of the query rather than the end of the response.
        self.tokenizer.truncation_side = "left"
        self.model.eval()
        self.id2label = dict(self.model.config.id2label)
        self.reward_index = label_index(self.id2label, reward_label)
        self.batch_size = batch_size

    def index_of(self, label: str) -> int:
        return label_index(self.id2label, label)

    @torch.no_grad()
    def score(self, texts: list[str]) -> Scores:
        """Logits for every text, in batches, truncated to the classifier's window."""
        logits = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True, truncation=True)
            logits.append(self.model(**enc).logits.float())
        all_logits = torch.cat(logits) if logits else torch.zeros(0, len(self.id2label))
        return Scores(reward=all_logits[:, self.reward_index], probabilities=all_logits.softmax(dim=-1))

    def rewards(self, texts: list[str]) -> torch.Tensor:
        return self.score(texts).reward

    def toxicity(self, texts: list[str], toxic_label: str = "hate") -> torch.Tensor:
        return self.score(texts).probabilities[:, self.index_of(toxic_label)]
