"""Tiny stand-ins for the real models, built from configs and saved to disk.

No model hub is needed: the tests and the offline demo build a word-level
tokenizer from the shipped DialogSum-format sample, a 2-layer T5 with a
briefly trained LoRA summarization adapter, and a 2-layer RoBERTa
classifier (labels `nothate`/`hate`) trained to flag a short list of hostile
words. Everything is then loaded back by the same `from_pretrained` code the
real jobs use.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, TaskType, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForSequenceClassification,
    T5Config,
    T5ForConditionalGeneration,
)

from . import data

# Words the tiny reward model learns to call hateful; the sample dialogues use
# a few of them so that the tiny summarizer sometimes says them too.
HOSTILE_WORDS = ("stupid", "idiot", "hate", "kill", "ugly", "useless", "shut", "damn")

T5_SPECIALS = ["<pad>", "</s>", "<unk>"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


@dataclass
class TinyModels:
    base_model: Path
    peft_checkpoint: Path
    reward_model: Path


def _words(texts) -> list[str]:
    seen = {}
    for text in texts:
        for word in re.findall(r"\w+|[^\w\s]", text):
            seen[word] = None
    return list(seen)


def _word_tokenizer(vocab_words: list[str], specials: list[str], template: str, pair: str):
    vocab = {token: i for i, token in enumerate(specials + [w for w in vocab_words if w not in specials])}
    unk = "<unk>"
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    special_ids = [(s, vocab[s]) for s in specials if s in template or s in pair]
    tok.post_processor = processors.TemplateProcessing(single=template, pair=pair, special_tokens=special_ids)
    return tok


def build_t5_tokenizer(vocab_words: list[str]) -> PreTrainedTokenizerFast:
    tok = _word_tokenizer(vocab_words, T5_SPECIALS, "$A </s>", "$A </s> $B </s>")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=512,
        model_input_names=["input_ids", "attention_mask"],
    )


def build_roberta_tokenizer(vocab_words: list[str]) -> PreTrainedTokenizerFast:
    tok = _word_tokenizer(vocab_words, ROBERTA_SPECIALS, "<s> $A </s>", "<s> $A </s> </s> $B </s>")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=512,
        model_input_names=["input_ids", "attention_mask"],
    )


def _train_summarization_adapter(model, tokenizer, records, steps: int, seed: int):
    """A few supervised steps so the adapter is really trained (non-zero B)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    prompts = [data.make_prompt(r["dialogue"]) for r in records]
    targets = [r["summary"] for r in records]
    for step in range(steps):
        idx = [(step * 8 + i) % len(records) for i in range(8)]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, truncation=True)
        labels = tokenizer([targets[i] for i in idx], return_tensors="pt", padding=True).input_ids
        labels[labels == tokenizer.pad_token_id] = -100
        loss = model(**enc, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def _train_reward_model(model, tokenizer, texts, steps: int, seed: int):
    """Teach the classifier: label 1 (`hate`) when a hostile word appears."""
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch, labels = [], []
        for _ in range(16):
            words = texts[int(torch.randint(len(texts), (1,), generator=gen))].split()[:30]
            if torch.rand(1, generator=gen) < 0.5:
                pos = int(torch.randint(len(words) + 1, (1,), generator=gen))
                words.insert(pos, HOSTILE_WORDS[int(torch.randint(len(HOSTILE_WORDS), (1,), generator=gen))])
            batch.append(" ".join(words))
            labels.append(int(any(w in HOSTILE_WORDS for w in re.findall(r"\w+", " ".join(words).lower()))))
        enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True)
        loss = model(**enc, labels=torch.tensor(labels)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def build_tiny_models(
    dest: Path, seed: int = 0, adapter_steps: int = 60, reward_steps: int = 80
) -> TinyModels:
    """Build and save a tiny base model, summarization adapter and reward model under `dest`."""
    dest = Path(dest)
    records = data.read_records(data.SAMPLE_DATASET)
    texts = [r["dialogue"] for r in records] + [r["summary"] for r in records]
    vocab_words = _words(texts + list(HOSTILE_WORDS) + [data.PROMPT_HEAD, data.PROMPT_TAIL])
    torch.manual_seed(seed)

    t5_tokenizer = build_t5_tokenizer(vocab_words)
    t5_config = T5Config(
        vocab_size=len(t5_tokenizer),
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        dropout_rate=0.1,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    )
    base = T5ForConditionalGeneration(t5_config)
    base_dir = dest / "base_model"
    base.save_pretrained(base_dir)
    t5_tokenizer.save_pretrained(base_dir)

    lora = LoraConfig(
        r=8,
        lora_alpha=8,
        target_modules=["q", "v"],
        lora_dropout=0.05,
        bias="none",
        task_type=TaskType.SEQ_2_SEQ_LM,
    )
    peft_model = get_peft_model(T5ForConditionalGeneration.from_pretrained(base_dir), lora)
    _train_summarization_adapter(peft_model, t5_tokenizer, records, adapter_steps, seed)
    peft_dir = dest / "peft_checkpoint"
    peft_model.save_pretrained(peft_dir)
    # The published checkpoint names its base by hub id; point it at the local copy.
    config_path = peft_dir / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config["base_model_name_or_path"] = "google/flan-t5-base"
    config_path.write_text(json.dumps(adapter_config, indent=2))
    t5_tokenizer.save_pretrained(peft_dir)

    roberta_tokenizer = build_roberta_tokenizer(vocab_words)
    roberta_config = RobertaConfig(
        vocab_size=len(roberta_tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=514,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        id2label={0: "nothate", 1: "hate"},
        label2id={"nothate": 0, "hate": 1},
    )
    reward = RobertaForSequenceClassification(roberta_config)
    _train_reward_model(reward, roberta_tokenizer, texts, reward_steps, seed)
    reward_dir = dest / "reward_model"
    reward.save_pretrained(reward_dir)
    roberta_tokenizer.save_pretrained(reward_dir)
    return TinyModels(base_model=base_dir, peft_checkpoint=peft_dir, reward_model=reward_dir)
