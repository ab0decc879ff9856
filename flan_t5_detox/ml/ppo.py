"""The PPO loop: rollout (batched generation) -> reward -> trl PPO step, with checkpoints.

The policy comes from `policy.build_policy`, whose reference (adapter disabled)
is the starting summarizer, so trl's KL penalty pulls toward the model we
started from. Everything a resumed run needs is in `checkpoint.Snapshot`.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers.modeling_outputs import BaseModelOutput
from trl import PPOConfig, PPOTrainer
from trl.core import clip_by_value, entropy_from_logits

from flan_t5_detox.contract.settings import TrainConfig
from flan_t5_detox.fast.logprobs import chosen_logprobs
from flan_t5_detox.ml import checkpoint
from flan_t5_detox.ml.data import BatchOrder, Example
from flan_t5_detox.ml.distributed import World
from flan_t5_detox.ml.generation import (
    LengthSampler,
    SamplingSettings,
    decode,
    encode,
    generate,
    pad_states,
    stream_seed,
)
from flan_t5_detox.ml.minibatches import StepPlan
from flan_t5_detox.ml.rewards import RewardFn


class TrainingDiverged(RuntimeError):
    """Non-finite rewards or a KL beyond `max_kl`: stop with the last good step on disk."""


def ppo_config(config: TrainConfig, world: World = World()) -> PPOConfig:
    """trl's settings for one process: its batch and mini-batch are its shares of the global ones."""
    return PPOConfig(
        learning_rate=config.learning_rate,
        batch_size=config.batch_size // world.size,
        mini_batch_size=config.mini_batch_size // world.size,
        ppo_epochs=config.ppo_epochs,
        init_kl_coef=config.init_kl_coef,
        adap_kl_ctrl=config.adap_kl_ctrl,
        target=config.kl_target,
        horizon=config.kl_horizon,
        cliprange=config.cliprange,
        cliprange_value=config.cliprange_value,
        vf_coef=config.vf_coef,
        gamma=config.gamma,
        lam=config.lam,
        max_grad_norm=config.max_grad_norm or None,
        seed=config.seed,
        optimize_cuda_cache=False,
    )


# A group may carry this much padding: a separate forward pass costs a fixed overhead and
# slightly smaller GEMMs, a padded token its full share of the work.
GROUP_PADDING = 0.1


class TrimmedPPOTrainer(PPOTrainer):
    """trl's PPOTrainer, with its forward passes done without padding or full-vocabulary copies,
    and its step run data-parallel on global statistics (`ppo_step`, `loss`).

    Same outputs as trl's `batched_forward_pass` (log-probs, values, masks, with trl's
    encoder-decoder masking: the first response token and the last position are masked), but:
    - rows run in groups of similar length, each group at its own length (trl pads the whole
      batch, or a training mini-batch of randomly drawn rows, to its longest query and
      response: with budgets of 100..400 tokens about a third of the work is padding). See
      `length_groups`. Padding is on the right and masked, rows never interact, and results
      come back in the caller's order and width; a training mini-batch is still one loss
      and one backward over all its rows;
    - the policy's scoring pass takes the rollout's encoder states (`reusing_encoder_states`)
      instead of running the encoder again: same weights, same queries. The reference pass
      (adapter off: the LoRA is on the encoder too) and training passes run the encoder;
    - log-probs and the entropy come from `logprobs.chosen_logprobs`, not from a full
      log-softmax (and, for the entropy statistic, three more full-vocabulary passes in
      `loss`). In the slot where trl returns the logits, training passes get the per-token
      entropy, which `loss` reports as `policy/entropy`.
    """

    _rollout: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None  # queries, encoder states
    world: World = World()
    group_padding: float = GROUP_PADDING  # a group's padding at most, as a share of its real tokens

    @contextmanager
    def reusing_encoder_states(self, queries: list[torch.Tensor], states: list[torch.Tensor]):
        """Within this block, the first no-grad pass of the policy over these queries (trl's
        scoring pass, before any update) takes these encoder states, computed by the policy as
        it is now. They are used up by that pass: later passes, after updates, run the encoder."""
        self._rollout = (queries, states)
        try:
            yield
        finally:
            self._rollout = None

    def _rollout_states(self, model, rows: list[tuple[int, torch.Tensor]], length: int):
        """The rollout's encoder states for these (batch position, query) rows, padded to `length`
        (trl scores the batch in the rollout's order), or None where they may differ: with
        grad, with the adapter off, or for other queries."""
        if self._rollout is None or torch.is_grad_enabled():
            return None
        if any(getattr(module, "disable_adapters", False) for module in model.modules()):
            return None
        rollout_queries, states = self._rollout
        found = []
        for i, query in rows:
            if i >= len(rollout_queries) or not torch.equal(query, rollout_queries[i]):
                return None
            found.append(states[i])
        return pad_states(found, length)

    def batched_forward_pass(self, model, queries, responses, model_inputs, return_logits=False):
        if self.tokenizer.padding_side != "right" or "decoder_input_ids" not in model_inputs:
            return super().batched_forward_pass(model, queries, responses, model_inputs, return_logits)
        width = model_inputs["decoder_input_ids"].shape[1] - 1  # trl's outputs drop the last position
        order = sorted(range(len(queries)), key=lambda i: (len(responses[i]), len(queries[i])))
        parts, reused = [], False
        for rows in length_groups(
            [(len(queries[i]), len(responses[i])) for i in order],
            self.config.mini_batch_size,
            self.group_padding,
        ):
            rows = [order[i] for i in rows]
            inputs = _trim_padding({k: v[rows] for k, v in model_inputs.items()})
            length = inputs["attention_mask"].shape[1]
            encoded = self._rollout_states(model, [(i, queries[i]) for i in rows], length)
            reused = reused or encoded is not None
            part = _seq2seq_forward(model, inputs, return_logits, encoded)
            parts.append([None if t is None else _pad_to(t, width) for t in part])
        if reused:  # one pass only: the next no-grad pass may come after an update
            self._rollout = None
        back = torch.tensor(order).argsort()  # to the caller's row order
        logprobs, entropy, values, masks = (
            None if ts[0] is None else torch.cat(ts)[back] for ts in zip(*parts)
        )
        return logprobs, entropy, values, masks

    def loss(self, old_logprobs, values, rewards, logits, vpreds, logprobs, mask):
        # In the slot of the logits, our forward passes hand over the per-token entropy.
        entropy = entropy_from_logits(logits) if logits.dim() == 3 else logits
        return ppo_loss(
            self.config, self.world, old_logprobs, values, rewards, entropy, vpreds, logprobs, mask
        )

    def ppo_step(
        self,
        queries: list[torch.Tensor],
        responses: list[torch.Tensor],
        scores: torch.Tensor,
        epochs: list[list[list[int]]],
    ) -> dict[str, float]:
        """trl's PPO step (scoring and reference passes, KL-penalised rewards, mini-batch updates
        through `train_minibatch`, the KL controller) on this process's rows, with statistics over
        the global batch. `epochs`: for each PPO epoch, the rows of each of its mini-batches (see
        `minibatches.StepPlan`). trl's own `step` draws its mini-batches from torch's global
        generator and, on CPUs, reduces nothing across processes."""
        inputs = self.prepare_model_inputs(queries, responses)
        unwrapped = self.accelerator.unwrap_model(self.model)
        with torch.no_grad():
            logprobs, _, values, masks = self.batched_forward_pass(self.model, queries, responses, inputs)
            with unwrapped.pretrained_model.disable_adapter():
                ref_logprobs, _, _, _ = self.batched_forward_pass(self.model, queries, responses, inputs)
        kl_coef = self.kl_ctl.value
        rewards, _ = self.compute_rewards(list(scores), logprobs, ref_logprobs, masks)
        logprobs, values = logprobs.float(), values.float()

        stats = []
        for minibatches in epochs:
            for rows in minibatches:
                part = {name: tensor[rows] for name, tensor in inputs.items()}
                new_logprobs, entropy, vpreds, _ = self.batched_forward_pass(
                    self.model, [queries[i] for i in rows], [responses[i] for i in rows], part, True
                )
                stats.append(
                    self.train_minibatch(
                        logprobs[rows],
                        values[rows],
                        rewards[rows],
                        new_logprobs,
                        entropy,
                        vpreds,
                        masks[rows],
                    )
                )
        global_rows = len(queries) * self.world.size
        kl = float(self.world.sum(((logprobs - ref_logprobs) * masks).sum())) / global_rows
        self.kl_ctl.update(kl, global_rows)
        means = {
            name: float(torch.stack([s[name] for s in stats]).float().mean())
            for name, value in stats[0].items()
            if value.numel() == 1
        }
        return {"objective/kl": kl, "objective/kl_coef": kl_coef, **means}


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


def length_groups(
    lengths: list[tuple[int, int]], max_rows: int, padding: float = GROUP_PADDING
) -> list[list[int]]:
    """Consecutive runs of `lengths` ((query, response) tokens, sorted by response length), each
    run at most `max_rows` long and padded to its longest query and response by at most
    `padding` of its real tokens. Returns the index lists."""
    groups: list[list[int]] = []
    for i in range(len(lengths)):
        rows = groups[-1] + [i] if groups else []
        if rows and len(rows) <= max_rows and _padded(lengths, rows) <= (1 + padding) * _real(lengths, rows):
            groups[-1] = rows
        else:
            groups.append([i])
    return groups


def _padded(lengths: list[tuple[int, int]], rows: list[int]) -> int:
    return len(rows) * (max(lengths[j][0] for j in rows) + max(lengths[j][1] for j in rows))


def _real(lengths: list[tuple[int, int]], rows: list[int]) -> int:
    return sum(lengths[j][0] + lengths[j][1] for j in rows)


def _seq2seq_forward(model, inputs: dict[str, torch.Tensor], with_entropy: bool, encoded=None):
    """One right-padded mini-batch: (log-probs, entropy or None, values, masks), each (rows, length - 1).
    `encoded`: the rows' encoder states, if already known."""
    tokens, attention = inputs["decoder_input_ids"], inputs["decoder_attention_mask"]
    lengths = attention.sum(1)
    if int(lengths.min()) < 4:
        raise ValueError("Responses are too short: PPO needs at least 3 tokens after the decoder start.")
    if encoded is not None:
        inputs = {**inputs, "encoder_outputs": BaseModelOutput(last_hidden_state=encoded)}
    logits, _, values = model(**inputs)
    logprobs, entropy = chosen_logprobs(logits, tokens[:, 1:], with_entropy)
    # trl's masks for encoder-decoder models: position t predicts token t + 1; positions
    # 1 .. (decoder length - 2) count, so the first response token is never trained on.
    positions = torch.arange(tokens.shape[1] - 1)
    masks = ((positions >= 1) & (positions < (lengths - 1)[:, None])).to(attention.dtype)
    return logprobs, entropy, values[:, :-1], masks


def _trim_padding(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the right-padding columns every row of this mini-batch has."""
    enc = int(inputs["attention_mask"].sum(1).max())
    dec = int(inputs["decoder_attention_mask"].sum(1).max())
    trimmed = {}
    for key, value in inputs.items():
        trimmed[key] = value[:, : dec if key.startswith("decoder_") else enc]
    return trimmed


def _pad_to(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Right-pad dim 1 with zeros (masked positions, as trl's own padding)."""
    if tensor.shape[1] == width:
        return tensor
    pad = [0, 0] * (tensor.dim() - 2) + [0, width - tensor.shape[1]]
    return torch.nn.functional.pad(tensor, pad)


@dataclass
class StepResult:
    metrics: dict[str, float]
    queries: list[str] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)


class DetoxTrainer:
    """Owns the trl trainer, the data order, the length sampler, the metrics history and the last
    good snapshot."""

    def __init__(
        self,
        config: TrainConfig,
        policy,
        tokenizer,
        prompts: list[Example],
        reward_fn: RewardFn,
        world: World = World(),
    ):
        self.config = config
        self.policy = policy  # the model itself; `self.trl.model` is it wrapped for DDP
        self.tokenizer = tokenizer
        self.reward_fn = reward_fn
        self.world = world
        self.plan = StepPlan(config.batch_size, config.mini_batch_size, world.size, world.rank)
        self.trl = TrimmedPPOTrainer(
            config=ppo_config(config, world), model=policy, ref_model=None, tokenizer=tokenizer
        )
        self.trl.world = world
        self.order = BatchOrder(len(prompts), config.batch_size, config.seed)
        self.lengths = LengthSampler(config.output_min_length, config.output_max_length, config.seed + 1)
        self.sampling = SamplingSettings(config.min_length, config.top_k, config.top_p)
        self.prompts = prompts
        self.query_ids = [
            torch.tensor(ids) for ids in tokenizer([p.prompt for p in prompts], truncation=True)["input_ids"]
        ]
        self.step = 0
        self.history: list[dict] = []  # every finished step's metrics, carried by the snapshots
        self.last_good = self.snapshot()

    # -- state -------------------------------------------------------------
    def snapshot(self) -> checkpoint.Snapshot:
        return checkpoint.take_snapshot(
            self.step, self.trl.kl_ctl.value, self.policy, self.trl.optimizer, self.lengths.rng, self.history
        )

    def restore(self, snap: checkpoint.Snapshot) -> None:
        checkpoint.restore(snap, self.policy, self.trl.optimizer, self.lengths.rng)
        self.trl.kl_ctl.value = snap.kl_coef
        self.step = snap.step
        self.history = [dict(h) for h in snap.history]
        self.last_good = snap

    # -- one step ----------------------------------------------------------
    def run_step(self) -> StepResult:
        """One PPO step on the global batch; this process rolls out and trains on its rows
        (`StepPlan`), and the metrics are the global batch's, the same on every process."""
        t_start = time.perf_counter()
        world, plan = self.world, self.plan
        batch = self.order.batch(self.step)
        rows = plan.rows()
        indices = [batch[row] for row in rows]
        queries = [self.query_ids[i] for i in indices]
        query_texts = [self.prompts[i].prompt for i in indices]

        t0 = time.perf_counter()
        self.policy.eval()
        batch_size = self.config.generation_batch_size
        encoded = encode(self.policy, self.tokenizer, queries, batch_size)
        # Budgets are drawn for the global batch, and row i of step n samples from its own
        # stream: a response depends neither on the generation batches nor on the world size.
        budgets = self.lengths.sample(len(batch))
        budgets = [budgets[row] for row in rows]
        seeds = [stream_seed(self.config.seed, self.step, row) for row in rows]
        responses = generate(
            self.policy, self.tokenizer, queries, budgets, self.sampling, batch_size, encoded, seeds
        )
        t1 = time.perf_counter()
        response_texts = decode(self.tokenizer, responses)
        scores = self.reward_fn(query_texts, response_texts).float()
        t2 = time.perf_counter()
        if world.any(not torch.isfinite(scores).all()):
            raise TrainingDiverged(f"non-finite rewards at step {self.step + 1}")

        epochs = [plan.epoch(self.config.seed, self.step, e) for e in range(self.config.ppo_epochs)]
        with self.trl.reusing_encoder_states(queries, encoded):
            stats = self.trl.ppo_step(queries, responses, scores, epochs)
        t3 = time.perf_counter()

        kl = stats["objective/kl"]
        if not math.isfinite(kl) or kl > self.config.max_kl:
            raise TrainingDiverged(
                f"mean KL {kl:.3g} exceeded max_kl={self.config.max_kl} at step {self.step + 1}"
            )
        self.step += 1
        # The global batch's scores and lengths, in its row order, from every process.
        everyone = torch.cat(world.gather(torch.stack([scores, _lengths(responses)], 1)))
        order = torch.tensor([row for rank in range(world.size) for row in plan.on_rank(rank).rows()])
        all_scores, all_lengths = everyone[order.argsort()].T
        metrics = {
            "step": self.step,
            "reward_mean": float(all_scores.mean()),
            "reward_std": float(all_scores.std()) if len(all_scores) > 1 else 0.0,
            "kl": kl,
            "kl_coef": float(stats["objective/kl_coef"]),
            "returns_mean": stats["returns/mean"],
            "advantages_mean": stats["policy/advantages_mean"],
            "policy_loss": stats["loss/policy"],
            "value_loss": stats["loss/value"],
            "response_length_mean": float(all_lengths.mean()),
            # The step waits for its slowest process: each phase's time is the longest one.
            "time_generate": world.max(t1 - t0),
            "time_reward": world.max(t2 - t1),
            "time_ppo": world.max(t3 - t2),
            "time_step": world.max(t3 - t_start),
        }
        self.history.append(metrics)
        self.last_good = self.snapshot()
        return StepResult(metrics, query_texts, response_texts)


def _lengths(responses: list[torch.Tensor]) -> torch.Tensor:
    """Response lengths in tokens, without the decoder start token."""
    return torch.tensor([len(r) - 1 for r in responses], dtype=torch.float32)
