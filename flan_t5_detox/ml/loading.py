"""Loading pretrained models and tokenizers from a folder (a channel) or a hub name.

Every failure is a `JobInputError` naming what could not be loaded, so the job reports it as
bad input."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, AutoTokenizer

from flan_t5_detox.contract.failure import JobInputError


def load_tokenizer(path_or_name: str | Path, what: str = "base model"):
    try:
        return AutoTokenizer.from_pretrained(str(path_or_name))
    except (OSError, ValueError) as exc:
        raise JobInputError(f"cannot load the {what}'s tokenizer from {path_or_name}: {exc}") from exc


def load_seq2seq(path_or_name: str | Path, dtype: torch.dtype = torch.float32):
    try:
        return AutoModelForSeq2SeqLM.from_pretrained(str(path_or_name), torch_dtype=dtype)
    except (OSError, ValueError) as exc:
        raise JobInputError(f"cannot load the base model from {path_or_name}: {exc}") from exc


def load_classifier(path_or_name: str | Path):
    try:
        return AutoModelForSequenceClassification.from_pretrained(str(path_or_name))
    except (OSError, ValueError) as exc:
        raise JobInputError(f"cannot load the reward model from {path_or_name}: {exc}") from exc
