"""Real-size stand-ins for flan-t5-base, its summarization adapter and roberta-base, with random weights.

There is no model hub here, so the benchmark builds the real architectures from
their configs and saves them to disk; both contenders then load them with
`from_pretrained`, as the jobs do. The tokenizers are word-level, with the real vocabulary sizes
(the words of `BENCH_SAMPLE`, then filler), and every T5 token is also a RoBERTa token, so a
response of n T5 tokens costs the reward model n tokens. The prompts come from `BENCH_SAMPLE`,
DialogSum-format dialogues of 200-1000 characters, so runs on different dates compare.
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

from flan_t5_detox.ml import data

from .common import BENCH_SAMPLE

T5_SPECIALS = ["<pad>", "</s>", "<unk>"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]

FIXTURE_VERSION = "1"  # bump when what is built changes

# google/flan-t5-base
T5_BASE = dict(
    vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
    layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
)  # fmt: skip
# roberta-base with the hate-speech classifier's two labels
ROBERTA_BASE = dict(
    vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
    eos_token_id=2, id2label={0: "nothate", 1: "hate"}, label2id={"nothate": 0, "hate": 1},
)  # fmt: skip
# the notebook's summarization adapter
LORA = dict(r=32, lora_alpha=32, target_modules=["q", "v"], lora_dropout=0.05, bias="none")


@dataclass
class Fixtures:
    base_model: Path
    peft_checkpoint: Path
    reward_model: Path


def vocabulary_words(texts) -> list[str]:
    """Every word and punctuation mark of `texts`, once each, in order of first appearance."""
    seen = {}
    for text in texts:
        for word in re.findall(r"\w+|[^\w\s]", text):
            seen[word] = None
    return list(seen)


def _word_tokenizer(vocab_words: list[str], specials: list[str], template: str, pair: str):
    vocab = {token: i for i, token in enumerate(specials + [w for w in vocab_words if w not in specials])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    special_ids = [(s, vocab[s]) for s in specials if s in template or s in pair]
    tok.post_processor = processors.TemplateProcessing(single=template, pair=pair, special_tokens=special_ids)
    return tok


def build_t5_tokenizer(vocab_words: list[str]) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=_word_tokenizer(vocab_words, T5_SPECIALS, "$A </s>", "$A </s> $B </s>"),
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=512,
        model_input_names=["input_ids", "attention_mask"],
    )


def build_roberta_tokenizer(vocab_words: list[str]) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=_word_tokenizer(
            vocab_words, ROBERTA_SPECIALS, "<s> $A </s>", "<s> $A </s> </s> $B </s>"
        ),
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=512,
        model_input_names=["input_ids", "attention_mask"],
    )


def _vocabulary(size: int, reserved: int, words: list[str], filler: str) -> list[str]:
    """`words` first, then distinct filler words, `size` entries with the `reserved` specials."""
    vocab = dict.fromkeys(words)
    i = 0
    while len(vocab) < size - reserved:
        vocab.setdefault(f"{filler}{i}")
        i += 1
    return list(vocab)[: size - reserved]


def build(dest: Path, seed: int = 0) -> Fixtures:
    """Build (once) and return the saved models under `dest`."""
    dest = Path(dest)
    fixtures = Fixtures(dest / "base_model", dest / "peft_checkpoint", dest / "reward_model")
    stamp = dest / "version.txt"
    if stamp.exists() and stamp.read_text() == FIXTURE_VERSION:
        return fixtures
    torch.manual_seed(seed)
    records = data.read_records(BENCH_SAMPLE)
    words = vocabulary_words([r["dialogue"] for r in records] + [data.PROMPT_HEAD, data.PROMPT_TAIL])

    t5_tokenizer = build_t5_tokenizer(_vocabulary(T5_BASE["vocab_size"], 3, words, "t"))
    T5ForConditionalGeneration(T5Config(**T5_BASE)).save_pretrained(fixtures.base_model)
    t5_tokenizer.save_pretrained(fixtures.base_model)

    lora = LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, **LORA)
    peft_model = get_peft_model(T5ForConditionalGeneration.from_pretrained(fixtures.base_model), lora)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # a trained adapter has non-zero B (peft initialises it to zero)
            torch.nn.init.normal_(param, std=0.02)
    peft_model.save_pretrained(fixtures.peft_checkpoint)
    config_path = fixtures.peft_checkpoint / "adapter_config.json"
    config_path.write_text(
        json.dumps({**json.loads(config_path.read_text()), "base_model_name_or_path": "base"})
    )

    # The RoBERTa vocabulary holds every T5 word, so decoded responses re-tokenize one to one.
    t5_words = [w for w in t5_tokenizer.get_vocab() if w not in ("<pad>", "</s>", "<unk>")]
    roberta_tokenizer = build_roberta_tokenizer(_vocabulary(ROBERTA_BASE["vocab_size"], 4, t5_words, "r"))
    reward = RobertaForSequenceClassification(RobertaConfig(**ROBERTA_BASE))
    reward.save_pretrained(fixtures.reward_model)
    roberta_tokenizer.save_pretrained(fixtures.reward_model)
    stamp.write_text(FIXTURE_VERSION)
    return fixtures
