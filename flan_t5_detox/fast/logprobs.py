"""Log-probabilities of the chosen tokens, and the entropy, a few rows of logits at a time.

Why not `log_softmax(logits).gather(...)` as trl does: on (batch, length, 32128) logits that
materialises, and for autograd keeps, a second tensor of the same size (200 MB for a
mini-batch of 4 x 400 tokens), and trl's entropy statistic makes three more passes and
copies over it. Here each chunk of rows is read while it is in cache, the forward keeps
only one number per row (the log-normaliser), and the backward writes the gradient once.

Why the floor: a trained model's distribution is peaked, so most of the vocabulary sits
hundreds of nats below the top token, and torch's CPU `exp` takes a slow path for results
that are denormal or underflow (`python -m bench.kernels` times it). Shifted logits are
floored at -80 first: e^-80 is 1.8e-35, nothing next to the top token's 1.
"""

from __future__ import annotations

import torch

CHUNK_ROWS = 16  # 16 x 32128 fp32 = 2 MB: stays in a core's cache (bench.kernels times the choice)
FLOOR = -80.0


def _normalise(chunk: torch.Tensor, with_entropy: bool):
    """(log-normaliser, entropy or None) of each row of fp32 logits."""
    top = chunk.amax(dim=-1, keepdim=True)
    shifted = (chunk - top).clamp_(min=FLOOR)
    weights = shifted.exp()
    total = weights.sum(dim=-1)
    log_total = total.log()
    if not with_entropy:
        return top[:, 0] + log_total, None
    # H = -sum p log p with p = w / total and log p = shifted - log(total)
    return top[:, 0] + log_total, log_total - (weights * shifted).sum(dim=-1) / total


class _ChosenLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, with_entropy):
        batch, length = labels.shape
        picked = logits[:, :length].gather(2, labels[..., None])[..., 0].float()
        normaliser = torch.empty(batch, length)
        entropy = torch.empty(batch, length) if with_entropy else None
        for b in range(batch):
            for start in range(0, length, CHUNK_ROWS):
                end = min(start + CHUNK_ROWS, length)
                lse, h = _normalise(logits[b, start:end].float(), with_entropy)
                normaliser[b, start:end] = lse
                if with_entropy:
                    entropy[b, start:end] = h
        ctx.save_for_backward(logits, labels, normaliser)
        if entropy is not None:
            ctx.mark_non_differentiable(entropy)
        return picked - normaliser, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, _grad_entropy):
        # d logp(y) / d x = onehot(y) - softmax(x), scaled by the incoming gradient.
        logits, labels, normaliser = ctx.saved_tensors
        batch, length = labels.shape
        grad = torch.empty_like(logits)
        grad[:, length:] = 0  # positions past `length` get no gradient; the rest is written below
        for b in range(batch):
            for start in range(0, length, CHUNK_ROWS):
                end = min(start + CHUNK_ROWS, length)
                upstream = grad_logprobs[b, start:end, None]
                shifted = logits[b, start:end].float() - normaliser[b, start:end, None]
                part = shifted.clamp_(min=FLOOR).exp_().mul_(-upstream)
                part.scatter_add_(1, labels[b, start:end, None], upstream)
                grad[b, start:end] = part  # one rounding, if the logits are low precision
        return grad, None, None


def chosen_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(labels[b, t]) under logits[b, t] for t < labels.shape[1] (fp32, differentiable), and,
    if asked, the entropy of each position's distribution (fp32, a statistic: no gradient).

    `logits` is (batch, length, vocab), `labels` (batch, n) with n <= length: the trailing
    positions (e.g. the one after the last token) are ignored without slicing a copy."""
    logprobs, entropy = _ChosenLogProbs.apply(logits, labels, with_entropy)
    return logprobs, entropy
