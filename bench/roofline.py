"""Analytic FLOPs of each phase (from the model configs and the real token counts) and the
machine's measured limits (GEMM throughput per dtype, memory bandwidth).

FLOPs count the matrix products the math needs, without padding: linear layers
(2 * in * out per token), attention scores and mixing (4 * queries * keys * width per
layer), the LM head, the LoRA products. Backward through frozen weights costs one
forward (input gradients only), attention products two. Generation uses the KV
cache: each new token runs the decoder on one position against its cached keys.
Roofline time of a phase = FLOPs / peak GEMM rate, except for generation: its decoder
steps are sequential, so its roofline is taken step by step (`generation_roofline`):
each step needs at least the larger of its FLOPs at peak and the bytes it must read
(the decoder weights once, plus the cached keys and values of every row still
generating) at the measured read bandwidth.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .fixtures import LORA, ROBERTA_BASE, T5_BASE


@dataclass
class T5Shape:
    d: int = T5_BASE["d_model"]
    inner: int = T5_BASE["num_heads"] * T5_BASE["d_kv"]
    ff: int = T5_BASE["d_ff"]
    enc_layers: int = T5_BASE["num_layers"]
    dec_layers: int = T5_BASE["num_decoder_layers"]
    vocab: int = T5_BASE["vocab_size"]
    lora_r: int = LORA["r"]  # q and v of every attention block

    def lora(self, tokens: float, modules: int) -> float:
        return 2 * tokens * modules * self.lora_r * (self.d + self.inner) if self.lora_r else 0.0

    def encoder(self, n: int) -> tuple[float, float]:
        """(linear, attention) FLOPs of the encoder on n tokens."""
        linear = 2 * n * (4 * self.d * self.inner + 3 * self.d * self.ff) + self.lora(n, 2)
        return self.enc_layers * linear, self.enc_layers * 4 * n * n * self.inner

    @property
    def decoder_layer_weights(self) -> int:
        """Values per decoder layer used per position: self q,k,v,o; cross q,o; FF."""
        return 6 * self.d * self.inner + 3 * self.d * self.ff

    def cross_keys_values(self, s: int) -> float:
        """FLOPs of the cross-attention k, v projections of s encoder tokens, all layers."""
        return self.dec_layers * (2 * s * 2 * self.d * self.inner + self.lora(s, 1))

    def decoder(self, t: int, s: int) -> tuple[float, float]:
        """(linear, attention) FLOPs of a teacher-forced decoder pass: t positions, s encoder tokens."""
        linear = self.dec_layers * (2 * t * self.decoder_layer_weights + self.lora(t, 3))
        attention = 4 * t * t * self.inner + 4 * t * s * self.inner
        head = 2 * t * self.d * self.vocab
        return linear + self.cross_keys_values(s) + head, self.dec_layers * attention

    def decode_step(self, t: int, sources: list[int], bytes_per_value: int) -> tuple[float, float]:
        """(FLOPs, bytes read) of decoder step t for rows whose queries have these lengths: one
        position per row against its t + 1 cached self-attention and its cross-attention keys
        and values; the weights are read once for all rows."""
        per_token = self.dec_layers * (2 * self.decoder_layer_weights + self.lora(1, 3))
        flops = len(sources) * (per_token + 2 * self.d * self.vocab)
        flops += sum(self.dec_layers * 4 * (t + 1 + s) * self.inner for s in sources)
        cached = sum(self.dec_layers * 2 * (t + 1 + s) * self.inner for s in sources)
        return flops, self.decoder_weight_bytes(bytes_per_value) + bytes_per_value * cached

    def decode(self, n: int, s: int) -> float:
        """FLOPs of sampling n tokens one at a time with the KV cache (after the encoder)."""
        steps = sum(self.decode_step(t, [s], 0)[0] for t in range(n))
        return self.cross_keys_values(s) + steps

    def decoder_weight_bytes(self, bytes_per_value: int) -> float:
        return bytes_per_value * (self.dec_layers * self.decoder_layer_weights + self.d * self.vocab)


@dataclass
class RobertaShape:
    d: int = ROBERTA_BASE["hidden_size"]
    ff: int = ROBERTA_BASE["intermediate_size"]
    layers: int = ROBERTA_BASE["num_hidden_layers"]

    def forward(self, n: int) -> float:
        return self.layers * (2 * n * (4 * self.d * self.d + 2 * self.d * self.ff) + 4 * n * n * self.d)


def ppo_step_flops(
    query_tokens: list[int], response_tokens: list[int], reward_tokens: list[int]
) -> dict[str, float]:
    """FLOPs per phase of one PPO step (ppo_epochs=1): rollout, reward, two scoring passes
    (policy, reference), one training forward and its backward. The least work: the policy's
    scoring pass needs no encoder (the rollout's encoder states are the same), the reference's
    does (its adapter is off, and the LoRA is on the encoder too)."""
    t5, roberta = T5Shape(), RobertaShape()
    generate = encoder = decoder = backward = 0.0
    for q, n in zip(query_tokens, response_tokens):
        enc_lin, enc_att = t5.encoder(q)
        dec_lin, dec_att = t5.decoder(n + 1, q)  # + the decoder start token
        generate += enc_lin + enc_att + t5.decode(n, q)
        encoder += enc_lin + enc_att
        decoder += dec_lin + dec_att
        backward += enc_lin + 2 * enc_att + dec_lin + 2 * dec_att
    return {
        "generate": generate,
        "reward": sum(roberta.forward(n) for n in reward_tokens),
        "ppo_score": encoder + 2 * decoder,
        "ppo_train_forward": encoder + decoder,
        "ppo_backward": backward,
    }


def eval_flops(
    query_tokens: list[int], response_tokens: list[int], reward_tokens: list[int]
) -> dict[str, float]:
    t5, roberta = T5Shape(lora_r=0), RobertaShape()  # evaluation runs the merged summarizer
    generate = sum(sum(t5.encoder(q)) + t5.decode(n, q) for q, n in zip(query_tokens, response_tokens))
    return {"generate": generate, "reward": sum(roberta.forward(n) for n in reward_tokens)}


def generation_roofline(
    query_tokens: list[int],
    response_tokens: list[int],
    bytes_per_value: int,
    peak_gflops: float,
    memory_gbps: float,
    lora: bool = True,
) -> float:
    """Least seconds for sampling these responses as one batch: the encoder and the
    cross-attention projections at peak, then one decoder step per token of the longest
    response, each at the larger of its FLOPs at peak and its bytes at the bandwidth. A row
    takes part in steps 0 .. its length - 1 (the best schedule: finished rows do no work)."""
    t5 = T5Shape() if lora else T5Shape(lora_r=0)
    upfront = 0.0
    for q in query_tokens:
        upfront += sum(t5.encoder(q)) + t5.cross_keys_values(q)
    seconds = upfront / (peak_gflops * 1e9)
    for t in range(max(response_tokens)):
        sources = [q for q, n in zip(query_tokens, response_tokens) if n > t]
        flops, read = t5.decode_step(t, sources, bytes_per_value)
        seconds += max(flops / (peak_gflops * 1e9), read / (memory_gbps * 1e9))
    return seconds


# -- measured limits -------------------------------------------------------------------------
GEMM_SHAPES = [(1, 768, 2048), (16, 768, 2048), (1024, 768, 2048), (2048, 768, 3072), (1024, 768, 32128)]


def gemm_gflops(dtype: torch.dtype, shapes=GEMM_SHAPES, trials: int = 10) -> dict[str, float]:
    """Best-of-`trials` GFLOP/s of `a @ b` per shape (best-of: the machine is shared)."""
    rates = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        a @ b
        flops = 2 * m * k * n
        reps = max(1, int(2e9 / flops)) if dtype == torch.float32 else max(1, int(2e8 / flops))
        best = 0.0
        for _ in range(trials):
            start = time.perf_counter()
            for _ in range(reps):
                a @ b
            best = max(best, flops * reps / (time.perf_counter() - start) / 1e9)
        rates[f"{m}x{k}x{n}"] = round(best, 1)
    return rates


def memory_gbps(trials: int = 10) -> float:
    """Best-of copy bandwidth (read + write) of a 256 MB buffer."""
    src = torch.ones(64 * 2**20)
    dst = torch.empty_like(src)
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        dst.copy_(src)
        best = max(best, 2 * src.numel() * 4 / (time.perf_counter() - start) / 1e9)
    return round(best, 1)


def read_gbps(trials: int = 10) -> float:
    """Best-of read bandwidth: summing a 256 MB buffer (generation's traffic is reads)."""
    src = torch.ones(64 * 2**20)
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        src.sum()
        best = max(best, src.numel() * 4 / (time.perf_counter() - start) / 1e9)
    return round(best, 1)
