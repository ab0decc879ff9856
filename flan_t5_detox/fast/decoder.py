"""One T5 decoder step at a time over preallocated key/value caches.

Why not `model(..., past_key_values=...)`: transformers 4.27's T5 grows each
layer's self-attention cache with `torch.cat` on every token (a copy of the
whole cache: quadratic in the response length) and recomputes the relative
position bias for the full square on every step. Here the caches are written
in place and the bias table is built once. The step calls the model's own
modules (layer norms, projections with any LoRA on them, the FFN, the LM head
and its hooks), so weights, adapters and dtypes are exactly the model's; only
the attention arithmetic around them is spelled out, as T5 does it (no 1/sqrt(d)
scaling, softmax in fp32, additive mask).

While decoding, `decoding_products` gives each projection the product that suits
few-row inputs and lets LoRA layers apply their merged weight.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
from peft.tuners.lora import LoraLayer

# From this many rows up, torch 1.13's MKL computes a projection faster as W @ x^T than as
# x @ W^T; below it, slower (bench/RESULTS.md, "weight-first products").
WEIGHT_FIRST_MIN_ROWS = 13


def _decoding_linear(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x @ weight^T, weight first from WEIGHT_FIRST_MIN_ROWS rows."""
    rows = x.numel() // x.shape[-1]
    if rows < WEIGHT_FIRST_MIN_ROWS:
        return torch.nn.functional.linear(x, weight)
    product = torch.mm(weight, x.reshape(rows, x.shape[-1]).t())
    return product.t().contiguous().view(*x.shape[:-1], weight.shape[0])


def _decoding_weight(module: torch.nn.Module) -> torch.Tensor | None:
    """The one weight matrix a bias-free projection applies, or None to leave the module be.

    An active, unmerged fp32 LoRA layer gets W + s·B·A, so decoding pays for one product instead
    of three (same function; float rounding differs). Its weights do not change while decoding."""
    if not isinstance(module, torch.nn.Linear) or module.bias is not None:
        return None
    if type(module) is torch.nn.Linear:
        return module.weight
    if not isinstance(module, LoraLayer) or module.fan_in_fan_out or module.merged:
        return None
    adapter = module.active_adapter
    if module.disable_adapters or adapter not in module.lora_A or module.r[adapter] == 0:
        return module.weight
    dropout = module.lora_dropout[adapter]
    if module.weight.dtype != torch.float32 or (dropout.training and isinstance(dropout, torch.nn.Dropout)):
        return None
    with torch.no_grad():
        delta = module.lora_B[adapter].weight @ module.lora_A[adapter].weight
        return module.weight + delta * module.scaling[adapter]


@contextmanager
def decoding_products(*modules: torch.nn.Module):
    """Within the block, the bias-free projections in `modules` (plain or LoRA) take
    `_decoding_linear` with their `_decoding_weight`; after it, each has its own forward again."""
    patched = []
    for module in modules:
        for linear in module.modules():
            weight = _decoding_weight(linear)
            if weight is not None:
                linear.forward = partial(_decoding_linear, weight)
                patched.append(linear)
    try:
        yield
    finally:
        for linear in patched:
            del linear.forward


def _t5(seq2seq):
    """The T5ForConditionalGeneration inside a PeftModel (LoRA layers live in its modules)."""
    return seq2seq.get_base_model() if hasattr(seq2seq, "get_base_model") else seq2seq


class IncrementalDecoder:
    """Decodes a batch one token per `step`; `keep` drops finished rows, moving the last rows into
    their places in every cache."""

    def __init__(self, seq2seq, encoded: torch.Tensor, attention_mask: torch.Tensor, max_steps: int):
        self.t5 = _t5(seq2seq)
        config = self.t5.config
        self.heads, self.head_dim = config.num_heads, config.d_kv
        self.blocks = self.t5.decoder.block
        batch, dtype = encoded.shape[0], encoded.dtype
        self.length = 0
        self.self_k = torch.zeros(len(self.blocks), batch, self.heads, max_steps, self.head_dim, dtype=dtype)
        self.self_v = torch.zeros_like(self.self_k)
        # Cross-attention keys/values depend only on the encoder output: computed once, and
        # stored contiguous (keys already transposed) so no step has to copy them for matmul.
        cross = [block.layer[1].EncDecAttention for block in self.blocks]
        self.cross = [
            (self._split(a.k(encoded)).transpose(2, 3).contiguous(), self._split(a.v(encoded)).contiguous())
            for a in cross
        ]
        self.cross_mask = (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        first = self.blocks[0].layer[0].SelfAttention
        self.position_bias = first.compute_bias(max_steps, max_steps).to(dtype)  # (1, heads, q, k)

    def _split(self, states: torch.Tensor) -> torch.Tensor:
        """(batch, length, heads*dim) -> (batch, heads, length, dim)"""
        return states.view(states.shape[0], -1, self.heads, self.head_dim).transpose(1, 2)

    def _attend(self, query, keys_t, values, bias, out_proj):
        """T5 attention for one query position; keys_t is (batch, heads, dim, length)."""
        scores = torch.matmul(self._split(query), keys_t) + bias
        weights = torch.softmax(scores.float(), dim=-1).type_as(scores)
        mixed = torch.matmul(weights, values)  # (batch, heads, 1, dim)
        return out_proj(mixed.transpose(1, 2).reshape(query.shape[0], 1, -1))

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (shape (batch,)); returns next-token logits (batch, vocab)."""
        t = self.length
        hidden = self.t5.decoder.embed_tokens(tokens[:, None])
        self_bias = self.position_bias[:, :, t : t + 1, : t + 1]
        for i, block in enumerate(self.blocks):
            layer = block.layer[0]
            attn = layer.SelfAttention
            normed = layer.layer_norm(hidden)
            self.self_k[i, :, :, t] = self._split(attn.k(normed))[:, :, 0]
            self.self_v[i, :, :, t] = self._split(attn.v(normed))[:, :, 0]
            keys_t, values = self.self_k[i, :, :, : t + 1].transpose(2, 3), self.self_v[i, :, :, : t + 1]
            hidden = hidden + self._attend(attn.q(normed), keys_t, values, self_bias, attn.o)

            layer = block.layer[1]
            attn = layer.EncDecAttention
            query = attn.q(layer.layer_norm(hidden))
            hidden = hidden + self._attend(query, *self.cross[i], self.cross_mask, attn.o)

            hidden = block.layer[2](hidden)  # T5LayerFF adds its own residual
        hidden = self.t5.decoder.final_layer_norm(hidden)
        if self.t5.config.tie_word_embeddings:
            hidden = hidden * self.t5.model_dim**-0.5
        self.length += 1
        return self.t5.lm_head(hidden)[:, 0]

    def keep(self, order: torch.Tensor) -> None:
        """Go on with `len(order)` rows, row j being the current row `order[j]`, where `order`
        comes from `compaction_order`: rows stay in place, or move from the tail into the places
        of finished rows. Only the moved rows' filled caches are copied (gathering every row's
        would copy the whole cache each time a row finishes)."""
        places = torch.arange(len(order))
        moved = (order != places).nonzero()[:, 0]
        if len(moved) and bool((order[moved] < len(order)).any()):
            raise ValueError("rows may only move from the tail into places that are free")
        source, filled = order[moved], self.length
        for cache in (self.self_k, self.self_v):
            cache[:, moved, :, :filled] = cache[:, source, :, :filled]
        self.self_k, self.self_v = self.self_k[:, : len(order)], self.self_v[:, : len(order)]
        for k, v in self.cross:
            k[moved], v[moved] = k[source], v[source]
        self.cross = [(k[: len(order)], v[: len(order)]) for k, v in self.cross]
        self.cross_mask = self.cross_mask[order]


def compaction_order(finished: torch.Tensor) -> torch.Tensor:
    """For a batch whose rows `finished` (bool, one per row) leave it: the current row of each row
    that goes on. Rows keep their places; the last rows going on fill the places of finished ones."""
    going_on = (~finished).nonzero()[:, 0]
    order = torch.arange(len(going_on))
    holes = finished[: len(going_on)].nonzero()[:, 0]
    order[holes] = going_on[going_on >= len(going_on)]
    return order
