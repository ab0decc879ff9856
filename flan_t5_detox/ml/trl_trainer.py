"""trl's PPOTrainer with trimmed forward passes and a data-parallel PPO step (`TrimmedPPOTrainer`),
and trl's settings for one process of a run (`ppo_config`).

The maths of the loss is in `ppo_loss`; the loop that rolls out, scores and calls `ppo_step` is
`ppo.DetoxTrainer`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import BaseModelOutput
from trl import PPOConfig, PPOTrainer
from trl.core import entropy_from_logits

from flan_t5_detox.contract.settings import TrainConfig
from flan_t5_detox.fast.logprobs import chosen_logprobs
from flan_t5_detox.ml.distributed import World
from flan_t5_detox.ml.generation import pad_states, run_encoder
from flan_t5_detox.ml.grouping import GROUP_PADDING, length_groups
from flan_t5_detox.ml.ppo_loss import ppo_loss


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
        early_stopping=config.target_kl > 0,
        target_kl=config.target_kl,
        seed=config.seed,
        optimize_cuda_cache=False,
    )


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
    - the policy's scoring pass takes the rollout's encoder states (`ppo_step`'s `encoded`)
      instead of running the encoder again: same weights, same queries. The reference pass
      (adapter off: the LoRA is on the encoder too) runs its encoder in the rollout's batches,
      so that before the first update, when the two models are one, both passes compute the
      same numbers and the KL is exactly 0 (a GEMM's rounding depends on its shape: bf16 turns
      that into a KL of order 1e-2 per response). Training passes run the encoder;
    - log-probs and the entropy come from `logprobs.chosen_logprobs`, not from a full
      log-softmax (and, for the entropy statistic, three more full-vocabulary passes in
      `loss`). In the slot where trl returns the logits, training passes get the per-token
      entropy, which `loss` reports as `policy/entropy`.

    `world`: the processes the step's statistics are reduced over. `group_padding`: a length
    group's padding at most, as a share of its real tokens.
    """

    def __init__(self, *args, world: World = World(), group_padding: float = GROUP_PADDING, **kwargs):
        self.world = world
        self.group_padding = group_padding
        super().__init__(*args, **kwargs)

    def batched_forward_pass(
        self,
        model,
        queries,
        responses,
        model_inputs,
        return_logits=False,
        encoded: EncoderStates | None = None,
    ):
        """trl's pass (see the class); `encoded`: these queries' encoder states, computed by `model`
        as it is now, to take instead of running its encoder."""
        if self.tokenizer.padding_side != "right" or "decoder_input_ids" not in model_inputs:
            return super().batched_forward_pass(model, queries, responses, model_inputs, return_logits)
        width = model_inputs["decoder_input_ids"].shape[1] - 1  # trl's outputs drop the last position
        order = sorted(range(len(queries)), key=lambda i: (len(responses[i]), len(queries[i])))
        parts = []
        for rows in length_groups(
            [(len(queries[i]), len(responses[i])) for i in order],
            self.config.mini_batch_size,
            self.group_padding,
        ):
            rows = [order[i] for i in rows]
            inputs = _trim_padding({k: v[rows] for k, v in model_inputs.items()})
            length = inputs["attention_mask"].shape[1]
            states = None if encoded is None else encoded.padded([(i, queries[i]) for i in rows], length)
            part = _seq2seq_forward(model, inputs, return_logits, states)
            parts.append([None if t is None else _pad_to(t, width) for t in part])
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
        encoded: EncoderStates | None = None,
    ) -> dict[str, float]:
        """trl's PPO step (scoring and reference passes, KL-penalised rewards, mini-batch updates
        through `train_minibatch`, the KL controller) on this process's rows, with statistics over
        the global batch. `epochs`: for each PPO epoch, the rows of each of its mini-batches (see
        `minibatches.StepPlan`). trl's own `step` draws its mini-batches from torch's global
        generator and, on CPUs, reduces nothing across processes.

        With trl's `early_stopping`, the updates stop after the first mini-batch whose policy KL
        exceeds 1.5 x `target_kl`, as trl's `step` does; that statistic is already the global
        mini-batch's, so every process stops at the same one. `ppo/epochs` says how many epochs
        ran: mini-batch updates done over mini-batches per epoch. `encoded`: the rollout's encoder
        states, for the scoring passes (`scoring_passes`); the training passes run the encoder."""
        inputs = self.prepare_model_inputs(queries, responses)
        logprobs, values, masks, ref_logprobs = self.scoring_passes(
            self.model, queries, responses, inputs, encoded
        )
        kl_coef = self.kl_ctl.value
        rewards, _ = self.compute_rewards(list(scores), logprobs, ref_logprobs, masks)
        logprobs, values = logprobs.float(), values.float()

        stats, stopped = [], False
        for minibatches in epochs:
            if stopped:
                break
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
                stopped = self.stops_early(stats[-1])
                if stopped:
                    break
        global_rows = len(queries) * self.world.size
        kl = float(self.world.sum(((logprobs - ref_logprobs) * masks).sum())) / global_rows
        self.kl_ctl.update(kl, global_rows)
        means = {
            name: float(torch.stack([s[name] for s in stats]).float().mean())
            for name, value in stats[0].items()
            if value.numel() == 1
        }
        epochs_run = len(stats) / len(epochs[0])
        return {"objective/kl": kl, "objective/kl_coef": kl_coef, "ppo/epochs": epochs_run, **means}

    def stops_early(self, minibatch_stats: dict[str, torch.Tensor]) -> bool:
        """trl's `early_stopping` rule, on one mini-batch's (global) statistics."""
        policy_kl = float(minibatch_stats["policy/policykl"])
        return bool(self.config.early_stopping) and policy_kl > 1.5 * self.config.target_kl

    def scoring_passes(self, model, queries, responses, inputs, encoded: EncoderStates | None = None):
        """trl's no-grad passes before an update: the policy's log-probs, values and masks, and the
        reference's log-probs (the policy with its trained adapter off: the starting summarizer).
        With the rollout's encoder states (`encoded`), the policy's pass takes them and the
        reference runs its encoder in the same batches (see the class)."""
        unwrapped = self.accelerator.unwrap_model(model)
        with torch.no_grad():
            logprobs, _, values, masks = self.batched_forward_pass(
                model, queries, responses, inputs, False, encoded
            )
            with unwrapped.pretrained_model.disable_adapter():
                reference = None if encoded is None else encoded.recomputed(unwrapped, self.tokenizer)
                ref_logprobs, _, _, _ = self.batched_forward_pass(
                    model, queries, responses, inputs, False, reference
                )
        return logprobs, values, masks, ref_logprobs

    def response_kl(self, model, queries: list[torch.Tensor], responses: list[torch.Tensor]) -> torch.Tensor:
        """Each response's KL to the reference (log-ratio summed over its tokens, as the PPO
        step's `objective/kl` counts them), for responses `model` sampled."""
        inputs = self.prepare_model_inputs(queries, responses)
        logprobs, _, masks, ref_logprobs = self.scoring_passes(model, queries, responses, inputs)
        return sequence_kl(logprobs, ref_logprobs, masks)


@dataclass
class EncoderStates:
    """Encoder states of `queries` (one (length, d_model) tensor each) as `run_encoder` computed
    them in batches of `batch_size`."""

    queries: list[torch.Tensor]
    states: list[torch.Tensor]
    batch_size: int

    def padded(self, rows: list[tuple[int, torch.Tensor]], length: int) -> torch.Tensor:
        """The states of these (batch position, query) rows, padded to `length` (trl scores the
        batch in the rollout's order)."""
        for i, query in rows:
            if i >= len(self.queries) or not torch.equal(query, self.queries[i]):
                raise ValueError(f"encoder states given for other queries than row {i}'s")
        return pad_states([self.states[i] for i, _ in rows], length)

    def recomputed(self, model, tokenizer) -> EncoderStates:
        """The same queries through `model`'s encoder, in the same batches."""
        return EncoderStates(
            self.queries, run_encoder(model, tokenizer, self.queries, self.batch_size), self.batch_size
        )


def sequence_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per row, the sum over its counted tokens of log p - log p_ref: trl's KL estimate."""
    return ((logprobs - ref_logprobs) * masks).sum(1)


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
