"""Where a decoding step's time goes on this machine, side by side in one process.

    python -m bench.kernels            # after `python -m bench.run` has built bench/results/fixtures

1. One decoder step on flan-t5-base shapes, at 16, 4 and 1 rows, early and late in a response:
   transformers' cached forward (`past_key_values`) against `decoder.IncrementalDecoder`.
2. How fast MKL streams weights through the small-row products decoding is made of, against a
   plain read of the same tensors (the memory limit).
3. Drawing one token per row: `torch.multinomial` against `generation.draw_tokens`.
4. A whole rollout (16 prompts, budgets 109..392): the sampling loop over transformers' cache
   (the project's loop before `IncrementalDecoder`) against `generation.generate`.
5. A PPO training mini-batch's log-probs, entropy and their backward (4 x 400 positions x 32128):
   trl's `logprobs_from_logits` + `entropy_from_logits` against `logprobs.chosen_logprobs`, on
   spread-out and on peaked logits (a trained model's: most terms hundreds of nats down).
"""

from __future__ import annotations

import os
import time

import torch
from transformers.modeling_outputs import BaseModelOutput

from flan_t5_detox.fast.decoder import IncrementalDecoder
from flan_t5_detox.ml import generation
from flan_t5_detox.ml.adapters import load_merged
from flan_t5_detox.ml.generation import draw_tokens
from flan_t5_detox.ml.loading import load_tokenizer
from flan_t5_detox.ml.runtime import set_threads

from .common import RESULTS, command_line


def _best_ms(fn, *args, repeats: int = 5) -> float:
    fn(*args)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - start)
    return best * 1000


def decoder_steps(model, rows: int, positions=(20, 340), source_len: int = 150) -> dict[str, float]:
    """ms of one step after `position` earlier ones (caches of that length, random contents)."""
    config = model.config
    ids = torch.randint(5, 30000, (rows, source_len))
    mask = torch.ones_like(ids)
    token = torch.zeros(rows, dtype=torch.long)
    out = {}
    with torch.no_grad():
        encoded = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        encoder_outputs = BaseModelOutput(last_hidden_state=encoded)
        for position in positions:
            kv = (rows, config.num_heads, position, config.d_kv)
            cross = (rows, config.num_heads, source_len, config.d_kv)
            past = tuple(
                (torch.randn(kv), torch.randn(kv), torch.randn(cross), torch.randn(cross))
                for _ in range(config.num_decoder_layers)
            )
            inputs = dict(
                encoder_outputs=encoder_outputs, attention_mask=mask, decoder_input_ids=token[:, None],
                past_key_values=past, use_cache=True,
            )  # fmt: skip
            out[f"transformers t={position}"] = _best_ms(lambda kwargs: model(**kwargs), inputs)
            decoder = IncrementalDecoder(model, encoded, mask, position + 10)
            out[f"incremental t={position}"] = _best_ms(_step_at, decoder, position, token)
    return {k: round(v, 1) for k, v in out.items()}


def _step_at(decoder: IncrementalDecoder, position: int, token: torch.Tensor) -> None:
    decoder.length = position  # the same step each time
    decoder.step(token)


def weight_streaming() -> dict[str, float]:
    """GB/s of weights through F.linear at 1 and 16 rows vs a plain read (40 x 6 MB: not cache-resident)."""
    weights = [torch.randn(2048, 768) for _ in range(40)]
    size_gb = sum(w.numel() * 4 for w in weights) / 1e9
    rates = {"read (sum)": size_gb / _best_ms(lambda: [w.sum() for w in weights]) * 1000}
    for rows in (1, 16):
        x = torch.randn(rows, 768)
        ms = _best_ms(lambda rows_in: [torch.nn.functional.linear(rows_in, w) for w in weights], x)
        rates[f"F.linear, {rows} row(s)"] = size_gb / ms * 1000
    return {k: round(v, 1) for k, v in rates.items()}


def sampling(rows: int = 16, vocab: int = 32128) -> dict[str, float]:
    probs = torch.randn(rows, vocab).softmax(-1)
    return {
        "torch.multinomial ms": round(_best_ms(torch.multinomial, probs, 1, repeats=50), 2),
        "generation.draw_tokens ms": round(_best_ms(draw_tokens, probs, repeats=50), 2),
    }


def token_logprobs(rows: int = 4, length: int = 400, vocab: int = 32128) -> dict[str, float]:
    from trl.core import entropy_from_logits, logprobs_from_logits

    from flan_t5_detox.fast.logprobs import chosen_logprobs

    labels = torch.randint(0, vocab, (rows, length))
    upstream = torch.randn(rows, length)

    def trl_way(logits):
        logprobs, _ = logprobs_from_logits(logits[:, :-1], labels), entropy_from_logits(logits[:, :-1])
        logprobs.backward(upstream)

    def ours(logits):
        chosen_logprobs(logits, labels, with_entropy=True)[0].backward(upstream)

    out = {}
    for spread in (1.0, 20.0):
        logits = (spread * torch.randn(rows, length + 1, vocab)).requires_grad_()
        for name, fn in (("trl", trl_way), ("chosen_logprobs", ours)):
            out[f"{name}, logits x{spread:g}, ms"] = round(_best_ms(fn, logits, repeats=3), 1)
    return out


class TransformersCacheDecoder:
    """IncrementalDecoder's interface over the model's own forward with `past_key_values`
    (what the sampling loop used before IncrementalDecoder)."""

    def __init__(self, seq2seq, encoded, attention_mask, max_steps: int):
        self.seq2seq, self.encoded, self.attention_mask, self.past = seq2seq, encoded, attention_mask, None

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.seq2seq(
            encoder_outputs=BaseModelOutput(last_hidden_state=self.encoded),
            attention_mask=self.attention_mask,
            decoder_input_ids=tokens[:, None],
            past_key_values=self.past,
            use_cache=True,
        )
        self.past = out.past_key_values
        return out.logits[:, -1]

    def keep(self, rows: torch.Tensor) -> None:
        self.encoded, self.attention_mask = self.encoded[rows], self.attention_mask[rows]
        self.past = tuple(tuple(t.index_select(0, rows) for t in layer) for layer in self.past)


def rollouts(model, tokenizer, repeats: int = 2) -> dict[str, float]:
    """Best-of seconds for one rollout with each decoder in the same sampling loop, alternating
    (same prompts, budgets and seed)."""
    torch.manual_seed(0)
    queries = [torch.randint(5, 30000, (int(n),)) for n in torch.randint(59, 187, (16,))]
    budgets = torch.randint(109, 393, (16,)).tolist()
    settings = generation.SamplingSettings(min_length=max(budgets) + 1)  # every row runs to its budget
    decoders = {"transformers cache": TransformersCacheDecoder, "IncrementalDecoder": IncrementalDecoder}
    best = dict.fromkeys(decoders, float("inf"))
    try:
        for _ in range(repeats):
            for name, decoder in decoders.items():
                generation.IncrementalDecoder = decoder  # the one name `_sample` builds its decoder by
                start = time.perf_counter()
                generation.generate(model, tokenizer, queries, budgets, settings)
                best[name] = min(best[name], time.perf_counter() - start)
    finally:
        generation.IncrementalDecoder = IncrementalDecoder
    return {k: round(v, 1) for k, v in best.items()}


def main(argv=None) -> None:
    command_line("kernels", __doc__).parse_args(argv)
    threads = set_threads(0)
    fixtures = RESULTS / "fixtures"
    model = load_merged(fixtures / "base_model", fixtures / "peft_checkpoint", torch.float32)
    print(f"threads {threads}; MKL_DEBUG_CPU_TYPE={os.environ.get('MKL_DEBUG_CPU_TYPE')}")
    for rows in (16, 4, 1):
        print(f"decoder step, {rows} row(s), ms:", decoder_steps(model.eval(), rows), flush=True)
    print("weight streaming, GB/s:", weight_streaming(), flush=True)
    print("sampling one token per row, 16 x 32128:", sampling(), flush=True)
    print("log-probs + entropy + backward, 4 x 400 x 32128:", token_logprobs(), flush=True)
    tokenizer = load_tokenizer(fixtures / "base_model")
    print("rollout of 16 prompts (sum of budgets ~4200 tokens), s:", rollouts(model, tokenizer), flush=True)


if __name__ == "__main__":
    main()
