"""Batched sampling of summaries, with each response trimmed after its first EOS.

The lab notebook generates one prompt at a time; trl 0.4.x's batched seq2seq
generation keeps the pad tokens after EOS, which then count as response tokens
in the PPO step. Here the whole batch is sampled together and each response
ends at its first EOS.

Each prompt gets its own token budget (the notebook draws max_new_tokens from
100..400 per prompt). `model.generate` would run every row until the largest
budget of its batch; instead our sampling loop (the same distribution as
`generate`: min_length, then top-k, then top-p, then one draw) lets a row leave
the batch as soon as it reaches its budget or EOS, so later decoder steps run
only for the rows still generating (`decoder.IncrementalDecoder` holds the
key/value caches). Rows never interact, so a response does not depend on what
else is in its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import LogitsProcessorList, MinLengthLogitsProcessor, TopKLogitsWarper, TopPLogitsWarper

from flan_t5_detox.fast.decoder import IncrementalDecoder, compaction_order, decoding_products
from flan_t5_detox.fast.logprobs import chosen_logprobs
from flan_t5_detox.ml.grouping import length_groups


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


def _processors(settings: SamplingSettings, eos_token_id: int) -> LogitsProcessorList:
    """What `generate` applies for these settings, in its order."""
    processors = LogitsProcessorList([MinLengthLogitsProcessor(settings.min_length, eos_token_id)])
    if settings.top_k:
        processors.append(TopKLogitsWarper(settings.top_k))
    if settings.top_p < 1.0:
        processors.append(TopPLogitsWarper(settings.top_p))
    return processors


def draw_tokens(probs: torch.Tensor, generators: list[torch.Generator] | None = None) -> torch.Tensor:
    """One token per row from `probs` (batch, vocab), by inverting the CDF with one uniform per row.

    The same distribution as `torch.multinomial`, which draws an exponential for every vocabulary
    entry of every row at every step. Zero-probability tokens (EOS before min_length) are never
    drawn: their CDF step is empty. With `generators` (one per row) each row's uniform comes from
    its own stream; otherwise all come from torch's global one.
    """
    cdf = probs.cumsum(dim=-1)
    if generators is None:
        u = torch.rand(len(probs), 1, dtype=cdf.dtype)
    else:
        u = torch.cat([torch.rand(1, 1, dtype=cdf.dtype, generator=g) for g in generators])
    u = u * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1)


def _seq2seq(model):
    return model.pretrained_model if hasattr(model, "v_head") else model  # trl's value-head wrapper


@torch.no_grad()
def run_encoder(model, tokenizer, queries: list[torch.Tensor], batch_size: int = 0) -> list[torch.Tensor]:
    """Each query's encoder states, (query length, d_model), in batches of `batch_size` (0 = all),
    each batch run in groups of similar length (`grouping.length_groups`) to save padding.

    Rows are right-padded within a group and padding is masked, so a row's states depend on its
    group only through rounding (a GEMM's rounding depends on its shape). The groups depend only
    on the queries and `batch_size`: two calls on the same queries compute the same numbers, and
    `generate`, running the encoder on each of its batches, gets what this gave it."""
    encoder = _seq2seq(model).get_encoder()
    batch_size = batch_size or len(queries)
    states: list[torch.Tensor | None] = [None] * len(queries)
    for start in range(0, len(queries), batch_size):
        order = sorted(range(start, min(start + batch_size, len(queries))), key=lambda i: len(queries[i]))
        for group in length_groups([(len(queries[i]), 0) for i in order], max_rows=len(order)):
            rows = [order[j] for j in group]
            chunk = [queries[i] for i in rows]
            mask = _right_padding_mask(chunk)
            input_ids = torch.full(mask.shape, tokenizer.pad_token_id)
            for i, q in enumerate(chunk):
                input_ids[i, : len(q)] = q
            hidden = encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
            for i, row in enumerate(rows):
                states[row] = hidden[i, : len(queries[row])]
    return states


def _right_padding_mask(rows: list[torch.Tensor]) -> torch.Tensor:
    lengths = torch.tensor([len(r) for r in rows])
    return (torch.arange(int(lengths.max()))[None, :] < lengths[:, None]).long()


def pad_states(states: list[torch.Tensor], length: int | None = None) -> torch.Tensor:
    """(rows, length, d_model), zeros after each row's own states (positions its mask hides)."""
    length = length or max(len(s) for s in states)
    padded = states[0].new_zeros(len(states), length, states[0].shape[-1])
    for i, row in enumerate(states):
        padded[i, : len(row)] = row
    return padded


@torch.no_grad()
def _sample(
    seq2seq, encoded, attention_mask, budgets: list[int], processors, start_id: int, eos_id: int, streams
):
    """Sample row i up to budgets[i] new tokens or EOS; finished rows leave the batch."""
    decoder = IncrementalDecoder(seq2seq, encoded, attention_mask, max(budgets))
    with decoding_products(decoder.t5.decoder, decoder.t5.lm_head):
        return _sample_loop(decoder, budgets, processors, start_id, eos_id, streams)


def _sample_loop(
    decoder: IncrementalDecoder, budgets: list[int], processors, start_id: int, eos_id: int, streams
):
    rows = torch.arange(len(budgets))  # original index of each row still generating
    left = torch.tensor(budgets)
    sequences = torch.full((len(budgets), 1), start_id)
    done: list[torch.Tensor | None] = [None] * len(budgets)
    while len(rows):
        logits = decoder.step(sequences[:, -1])
        scores = processors(sequences, logits.float())
        tokens = draw_tokens(scores.softmax(dim=-1), None if streams is None else [streams[r] for r in rows])
        sequences, left = torch.cat([sequences, tokens], dim=1), left - 1
        finished = (tokens[:, 0] == eos_id) | (left <= 0)
        if finished.any():
            for i in finished.nonzero()[:, 0].tolist():
                done[int(rows[i])] = sequences[i].clone()
            keep = compaction_order(finished)
            rows, left, sequences = rows[keep], left[keep], sequences[keep]
            if len(keep):
                decoder.keep(keep)
    return done


def generate(
    model,
    tokenizer,
    queries: list[torch.Tensor],
    budgets: list[int],
    settings: SamplingSettings,
    batch_size: int = 0,
    encoder_states: list[torch.Tensor] | None = None,
    row_seeds: list[int] | None = None,
) -> list[torch.Tensor]:
    """Sample one response per query (decoder start token first), in batches of `batch_size` (0 = all).

    `encoder_states` (from `run_encoder`, same model and queries) saves running the encoder again.
    With `row_seeds`, query i samples from its own random stream, seeded `row_seeds[i]`: its
    response then depends on nothing else in the batch, not even on how long the others are."""
    seq2seq = _seq2seq(model)
    start_id = seq2seq.config.decoder_start_token_id
    processors = _processors(settings, tokenizer.eos_token_id)
    batch_size = batch_size or len(queries)
    responses: list[torch.Tensor] = []
    for start in range(0, len(queries), batch_size):
        chunk = queries[start : start + batch_size]
        if encoder_states is None:
            states = run_encoder(model, tokenizer, chunk)
        else:
            states = encoder_states[start : start + batch_size]
        responses.extend(
            _sample(
                seq2seq,
                pad_states(states),
                _right_padding_mask(chunk),
                budgets[start : start + batch_size],
                processors,
                start_id,
                tokenizer.eos_token_id,
                None if row_seeds is None else _streams(row_seeds[start : start + batch_size]),
            )
        )
    return responses


@torch.no_grad()
def response_logprobs(
    model, tokenizer, queries: list[torch.Tensor], responses: list[torch.Tensor], encoder_states=None
) -> list[torch.Tensor]:
    """Each response's token log-probs under `model`, teacher-forced on its query: one value per
    token after the decoder start (the closing EOS included), fp32. Rows are padded and masked,
    so a row's values do not depend on its batch. `encoder_states`: from `run_encoder`, if known."""
    seq2seq = _seq2seq(model)
    states = encoder_states if encoder_states is not None else run_encoder(model, tokenizer, queries)
    mask = _right_padding_mask(queries)
    width = max(len(r) for r in responses)
    decoder_ids = torch.full((len(responses), width), tokenizer.pad_token_id)
    for i, r in enumerate(responses):
        decoder_ids[i, : len(r)] = r
    logits = seq2seq(
        encoder_outputs=(pad_states(states),),
        attention_mask=mask,
        decoder_input_ids=decoder_ids,
        decoder_attention_mask=_right_padding_mask(responses),
    ).logits
    logprobs, _ = chosen_logprobs(logits, decoder_ids[:, 1:])
    return [logprobs[i, : len(r) - 1] for i, r in enumerate(responses)]


def stream_seed(seed: int, *keys: int) -> int:
    """The seed of one response's random stream, from the run's seed and what identifies the
    response (a dialogue's place in the sample; a PPO step and a row of its global batch)."""
    for key in keys:
        seed = (seed * 1_000_003 + key) % 2**63
    return seed


def _streams(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def detokenize(tokenizer, responses: list[torch.Tensor]) -> list[str]:
    """Each response's text, special tokens (decoder start, EOS) left out."""
    return tokenizer.batch_decode([r.tolist() for r in responses], skip_special_tokens=True)
