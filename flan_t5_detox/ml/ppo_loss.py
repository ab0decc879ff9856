"""trl's PPO loss as pure tensor maths, with every masked mean taken over the global mini-batch.

A data-parallel mini-batch is split across ranks; trl's `masked_mean` on one rank would weight
each rank's tokens by its own count. `GlobalMean` divides by the count over every rank instead,
so the loss, its gradient and its statistics equal those of one process holding the whole
mini-batch. On one process everything here is trl's `PPOTrainer.loss`, value and gradient.
"""

from __future__ import annotations

import torch
from trl import PPOConfig
from trl.core import clip_by_value

from flan_t5_detox.ml.distributed import World


class GlobalMean:
    """Masked means over the tokens of a mini-batch split across ranks; each call reduces all the
    tensors it is given at once (one all-reduce, not one per statistic).

    The value is the mean over every rank's tokens. The gradient is this rank's share of it,
    times the world size, because DDP averages the ranks' gradients: so the update equals the
    one a single process computes on the whole mini-batch. On one process it is trl's
    `masked_mean`, value and gradient."""

    def __init__(self, world: World, mask: torch.Tensor):
        self.world, self.mask = world, mask
        self.count = world.sum(mask.sum())

    def __call__(self, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The mean of each of `values` (of one dtype)."""
        local = torch.stack([(v * self.mask).sum() for v in values])
        means = (self.world.sum(local) + self.world.size * (local - local.detach())) / self.count
        return means.unbind()

    def moments(self, *values: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """The means and the unbiased variances (as trl's `masked_var`) of values that carry no
        gradient: two reductions."""
        means = tuple(m.detach() for m in self(*values))
        squares = self(*((v - m) ** 2 for v, m in zip(values, means)))
        return means, tuple(x.detach() * self.count / (self.count - 1) for x in squares)

    def whiten(self, values: torch.Tensor) -> torch.Tensor:
        """trl's `masked_whiten` (mean shifted back out) over the global mini-batch."""
        (mean,), (var,) = self.moments(values)
        return (values - mean) * torch.rsqrt(var + 1e-8)


def generalized_advantages(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float):
    """GAE per row over the response positions (masked positions hold zero reward and value)."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    width = rewards.shape[1]
    for t in reversed(range(width)):
        next_value = values[:, t + 1] if t + 1 < width else 0.0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    return advantages


def ppo_loss(config: PPOConfig, world: World, old_logprobs, values, rewards, entropy, vpreds, logprobs, mask):
    """trl's PPO loss (whitened GAE advantages, clipped policy and value losses) and its statistics,
    each masked mean taken over the global mini-batch (`GlobalMean`). Returns (policy loss,
    weighted value loss, statistics), as `PPOTrainer.loss` does."""
    mean = GlobalMean(world, mask)
    values, rewards = values * mask, rewards * mask
    advantages = generalized_advantages(rewards, values, config.gamma, config.lam)
    returns = advantages + values
    advantages = mean.whiten(advantages).detach()

    vpreds_clipped = clip_by_value(vpreds, values - config.cliprange_value, values + config.cliprange_value)
    value_losses = torch.max((vpreds - returns) ** 2, (vpreds_clipped - returns) ** 2)
    ratio = torch.exp(logprobs - old_logprobs)
    clipped_ratio = torch.clamp(ratio, 1.0 - config.cliprange, 1.0 + config.cliprange)
    policy_losses = torch.max(-advantages * ratio, -advantages * clipped_ratio)
    policy_loss, value_loss = mean(policy_losses, value_losses)
    value_loss = 0.5 * value_loss
    weighted_value_loss = config.vf_coef * value_loss

    # Every statistic in one reduction (two for the variances), as float64 like trl's clip fractions.
    measured = {
        "policy/entropy": entropy,
        "policy/approxkl": 0.5 * (logprobs - old_logprobs) ** 2,
        "policy/policykl": old_logprobs - logprobs,
        "policy/clipfrac": -advantages * clipped_ratio > -advantages * ratio,
        "policy/advantages_mean": advantages,
        "returns/mean": returns,
        "val/vpred": vpreds,
        "val/error": (vpreds - returns) ** 2,
        "val/clipfrac": (vpreds_clipped - returns) ** 2 > (vpreds - returns) ** 2,
        "val/mean": values,
    }
    means = mean(*(x.detach().double() for x in measured.values()))
    _, (returns_var, values_var) = mean.moments(returns.detach().double(), values.detach().double())
    stats = {
        "loss/policy": policy_loss.detach(),
        "loss/value": value_loss.detach(),
        "loss/total": (policy_loss + weighted_value_loss).detach(),
        **{name: m.detach() for name, m in zip(measured, means)},
        "policy/advantages": advantages,  # per position: trl's own `step` flattens these two
        "policy/ratio": ratio.detach(),
        "returns/var": returns_var,
        "val/var": values_var,
    }
    return policy_loss, weighted_value_loss, stats
