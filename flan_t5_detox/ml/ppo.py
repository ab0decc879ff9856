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

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutput
from trl import PPOConfig, PPOTrainer
from trl.core import masked_mean

from flan_t5_detox.contract.settings import TrainConfig
from flan_t5_detox.fast.logprobs import chosen_logprobs
from flan_t5_detox.ml import checkpoint
from flan_t5_detox.ml.data import BatchOrder, Example
from flan_t5_detox.ml.generation import (
    LengthSampler,
    SamplingSettings,
    decode,
    encode,
    generate,
    pad_states,
    stream_seed,
)
from flan_t5_detox.ml.rewards import RewardFn


class TrainingDiverged(RuntimeError):
    """Non-finite rewards or a KL beyond `max_kl`: stop with the last good step on disk."""


def ppo_config(config: TrainConfig) -> PPOConfig:
    return PPOConfig(
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        mini_batch_size=config.mini_batch_size,
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
    """trl's PPOTrainer, with its forward passes done without padding or full-vocabulary copies.

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
        if logits.dim() == 3:  # trl's own forward pass ran: real logits
            return super().loss(old_logprobs, values, rewards, logits, vpreds, logprobs, mask)
        entropy = logits
        # trl's loss, handed a one-wide stand-in for the logits (its entropy is 0, and costs
        # nothing); the entropy statistic is then the one computed with the log-probs.
        stand_in = entropy.detach().new_zeros(*entropy.shape, 1)
        policy_loss, value_loss, stats = super().loss(
            old_logprobs, values, rewards, stand_in, vpreds, logprobs, mask
        )
        stats["policy/entropy"] = masked_mean(entropy, mask)
        return policy_loss, value_loss, stats


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

    def __init__(self, config: TrainConfig, policy, tokenizer, prompts: list[Example], reward_fn: RewardFn):
        self.config = config
        self.policy = policy
        self.tokenizer = tokenizer
        self.reward_fn = reward_fn
        self.trl = TrimmedPPOTrainer(
            config=ppo_config(config), model=policy, ref_model=None, tokenizer=tokenizer
        )
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
        t_start = time.perf_counter()
        indices = self.order.batch(self.step)
        queries = [self.query_ids[i] for i in indices]
        query_texts = [self.prompts[i].prompt for i in indices]

        t0 = time.perf_counter()
        self.policy.eval()
        batch_size = self.config.generation_batch_size
        encoded = encode(self.policy, self.tokenizer, queries, batch_size)
        budgets = self.lengths.sample(len(queries))
        # Row i of step n samples from its own stream: a response does not depend on how the
        # batch is split into generation batches (or, later, across processes).
        seeds = [stream_seed(self.config.seed, self.step, row) for row in range(len(queries))]
        responses = generate(
            self.policy, self.tokenizer, queries, budgets, self.sampling, batch_size, encoded, seeds
        )
        t1 = time.perf_counter()
        response_texts = decode(self.tokenizer, responses)
        scores = self.reward_fn(query_texts, response_texts).float()
        t2 = time.perf_counter()
        if not torch.isfinite(scores).all():
            raise TrainingDiverged(f"non-finite rewards at step {self.step + 1}")

        with self.trl.reusing_encoder_states(queries, encoded):
            stats = self.trl.step(queries, responses, list(scores))
        t3 = time.perf_counter()

        kl = float(stats["objective/kl"])
        if not math.isfinite(kl) or kl > self.config.max_kl:
            raise TrainingDiverged(
                f"mean KL {kl:.3g} exceeded max_kl={self.config.max_kl} at step {self.step + 1}"
            )
        self.step += 1
        metrics = {
            "step": self.step,
            "reward_mean": float(scores.mean()),
            "reward_std": float(scores.std()) if len(scores) > 1 else 0.0,
            "kl": kl,
            "kl_coef": float(stats["objective/kl_coef"]),
            "returns_mean": float(stats["ppo/returns/mean"]),
            "advantages_mean": float(stats["ppo/policy/advantages_mean"]),
            "policy_loss": float(stats["ppo/loss/policy"]),
            "value_loss": float(stats["ppo/loss/value"]),
            "response_length_mean": float(np.mean([len(r) - 1 for r in responses])),
            "time_generate": t1 - t0,
            "time_reward": t2 - t1,
            "time_ppo": t3 - t2,
            "time_step": t3 - t_start,
        }
        self.history.append(metrics)
        self.last_good = self.snapshot()
        return StepResult(metrics, query_texts, response_texts)
