"""The PPO loop, one step at a time: generate (batched rollout), score (reward), step (trl's PPO
update on global statistics), log (the global batch's metrics), with a snapshot after each step.

The policy comes from `policy.build_policy`, whose reference (adapter disabled) is the starting
summarizer, so the KL penalty pulls toward the model we started from. The trl side is
`trl_trainer.TrimmedPPOTrainer`, its loss `ppo_loss`. Everything a resumed run needs is in
`checkpoint.Snapshot`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from flan_t5_detox.contract.settings import TrainConfig
from flan_t5_detox.ml import checkpoint
from flan_t5_detox.ml.data import BatchOrder, Example
from flan_t5_detox.ml.distributed import World
from flan_t5_detox.ml.generation import (
    LengthSampler,
    SamplingSettings,
    detokenize,
    generate,
    run_encoder,
    stream_seed,
)
from flan_t5_detox.ml.heldout import HeldOut
from flan_t5_detox.ml.minibatches import StepPlan
from flan_t5_detox.ml.rewards import RewardFn
from flan_t5_detox.ml.trl_trainer import EncoderStates, TrimmedPPOTrainer, ppo_config


class TrainingDiverged(RuntimeError):
    """Non-finite rewards or a KL beyond `max_kl`: stop with the last good step on disk."""


@dataclass
class StepResult:
    metrics: dict[str, float]
    queries: list[str] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)


@dataclass
class Rollout:
    """This process's rows of one step's global batch (`StepPlan.rows`) and their responses."""

    rows: list[int]  # places in the global batch
    queries: list[torch.Tensor]
    query_texts: list[str]
    encoded: list[torch.Tensor] = field(default_factory=list)  # encoder states, reused by scoring
    responses: list[torch.Tensor] = field(default_factory=list)  # decoder start token first
    response_texts: list[str] = field(default_factory=list)


class PhaseTimes:
    """Wall-clock seconds of a step's phases, and of the step up to the end of its last phase."""

    def __init__(self):
        self.start = self.end = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        began = time.perf_counter()
        yield
        self.end = time.perf_counter()
        self.seconds[name] = self.end - began

    def slowest(self, world: World) -> dict[str, float]:
        """Each phase's time as `time_<phase>`, and `time_step`: the longest over the processes,
        because the step waits for its slowest one."""
        times = {f"time_{name}": world.max(seconds) for name, seconds in self.seconds.items()}
        return {**times, "time_step": world.max(self.end - self.start)}


class DetoxTrainer:
    """Owns the trl trainer, the data order, the length sampler, the metrics history and the last
    good snapshot; with `heldout`, measures the held-out prompts at step 0, every `eval_every`
    steps and at `max_ppo_steps`, into the step's metrics."""

    def __init__(
        self,
        config: TrainConfig,
        policy,
        tokenizer,
        prompts: list[Example],
        reward_fn: RewardFn,
        world: World = World(),
        heldout: HeldOut | None = None,
    ):
        self.config = config
        self.heldout = heldout
        self.heldout_start: dict[str, float] = {}  # the starting summarizer's held-out figures
        self.policy = policy  # the model itself; `self.trl.model` is it wrapped for DDP
        self.tokenizer = tokenizer
        self.reward_fn = reward_fn
        self.world = world
        self.plan = StepPlan(config.batch_size, config.mini_batch_size, world.size, world.rank)
        self.trl = TrimmedPPOTrainer(
            config=ppo_config(config, world), model=policy, ref_model=None, tokenizer=tokenizer, world=world
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
        snap = checkpoint.take_snapshot(
            self.step, self.trl.kl_ctl.value, self.policy, self.trl.optimizer, self.lengths.rng, self.history
        )
        settings, start = dataclasses.asdict(self.config), dict(self.heldout_start)
        return dataclasses.replace(snap, settings=settings, heldout_start=start)

    def restore(self, snap: checkpoint.Snapshot) -> None:
        checkpoint.restore(snap, self.policy, self.trl.optimizer, self.lengths.rng)
        self.trl.kl_ctl.value = snap.kl_coef
        self.step = snap.step
        self.history = [dict(h) for h in snap.history]
        self.heldout_start = dict(snap.heldout_start)
        self.last_good = snap

    # -- held-out evaluation -------------------------------------------------
    def start_figures(self) -> dict[str, float]:
        """The starting summarizer's held-out figures (measured once, before the first update,
        then carried by the snapshots), as a step-0 metrics record; {} without held-out prompts."""
        if self.heldout is None:
            return {}
        if not self.heldout_start:
            if self.step:
                return {}  # resumed from a checkpoint older than held-out evaluation
            # Before any update the trained LoRA adds exact zeros: this is the starting summarizer.
            self.heldout_start = self.measure_heldout()
            self.last_good = self.snapshot()
        return {"step": 0, **self.heldout_start}

    def heldout_due(self) -> bool:
        every = self.config.eval_every
        return (
            self.heldout is not None
            and bool(every)
            and (self.step % every == 0 or self.step == self.config.max_ppo_steps)
        )

    def measure_heldout(self) -> dict[str, float]:
        self.policy.eval()
        return self.heldout.measure(self.policy, self.tokenizer, self.trl, self.world)

    # -- one step ----------------------------------------------------------
    def run_step(self) -> StepResult:
        """One PPO step on the global batch; this process rolls out and trains on its rows
        (`StepPlan`), and the metrics are the global batch's, the same on every process."""
        times = PhaseTimes()
        rollout = self.select_rows()
        with times.phase("generate"):
            self.generate(rollout)
        with times.phase("reward"):
            scores = self.score(rollout)
        with times.phase("ppo"):
            stats = self.ppo_update(rollout, scores)
        self.check_kl(stats["objective/kl"])
        self.step += 1
        heldout = {}
        if self.heldout_due():
            with times.phase("heldout"):
                heldout = self.measure_heldout()
        metrics = self.log(rollout, scores, stats, times, heldout)
        self.last_good = self.snapshot()
        return StepResult(metrics, rollout.query_texts, rollout.response_texts)

    def select_rows(self) -> Rollout:
        """This step's prompts, for this process's rows of the global batch."""
        batch = self.order.batch(self.step)
        rows = self.plan.rows()
        indices = [batch[row] for row in rows]
        return Rollout(rows, [self.query_ids[i] for i in indices], [self.prompts[i].prompt for i in indices])

    def generate(self, rollout: Rollout) -> None:
        """Sample a response to each query, keeping the encoder states for the scoring pass."""
        self.policy.eval()
        batch_size = self.config.generation_batch_size
        rollout.encoded = run_encoder(self.policy, self.tokenizer, rollout.queries, batch_size)
        # Budgets are drawn for the global batch, and row i of step n samples from its own
        # stream: a response depends neither on the generation batches nor on the world size.
        budgets = self.lengths.sample(self.plan.batch_size)
        budgets = [budgets[row] for row in rollout.rows]
        seeds = [stream_seed(self.config.seed, self.step, row) for row in rollout.rows]
        rollout.responses = generate(
            self.policy,
            self.tokenizer,
            rollout.queries,
            budgets,
            self.sampling,
            batch_size,
            rollout.encoded,
            seeds,
        )

    def score(self, rollout: Rollout) -> torch.Tensor:
        rollout.response_texts = detokenize(self.tokenizer, rollout.responses)
        return self.reward_fn(rollout.query_texts, rollout.response_texts).float()

    def ppo_update(self, rollout: Rollout, scores: torch.Tensor) -> dict[str, float]:
        """trl's PPO step on this process's rows, over this step's mini-batch plan."""
        if self.world.any(not torch.isfinite(scores).all()):
            raise TrainingDiverged(f"non-finite rewards at step {self.step + 1}")
        epochs = [self.plan.epoch(self.config.seed, self.step, e) for e in range(self.config.ppo_epochs)]
        encoded = EncoderStates(rollout.queries, rollout.encoded, self.config.generation_batch_size)
        return self.trl.ppo_step(rollout.queries, rollout.responses, scores, epochs, encoded)

    def check_kl(self, kl: float) -> None:
        if not math.isfinite(kl) or kl > self.config.max_kl:
            raise TrainingDiverged(
                f"mean KL {kl:.3g} exceeded max_kl={self.config.max_kl} at step {self.step + 1}"
            )

    def log(
        self, rollout: Rollout, scores: torch.Tensor, stats: dict, times: PhaseTimes, heldout: dict
    ) -> dict:
        """The finished step's metrics over the global batch (and its held-out figures, if it
        was measured), added to the history."""
        all_scores, all_lengths = self.gather_rows(
            torch.stack([scores, response_lengths(rollout.responses)], 1)
        )
        metrics = {
            "step": self.step,
            "reward_mean": float(all_scores.mean()),
            "reward_std": float(all_scores.std()) if len(all_scores) > 1 else 0.0,
            "kl": stats["objective/kl"],
            "kl_coef": float(stats["objective/kl_coef"]),
            "returns_mean": stats["returns/mean"],
            "advantages_mean": stats["policy/advantages_mean"],
            "policy_loss": stats["loss/policy"],
            "value_loss": stats["loss/value"],
            "response_length_mean": float(all_lengths.mean()),
            **times.slowest(self.world),
            "entropy": stats["policy/entropy"],
            "policy_clipfrac": stats["policy/clipfrac"],
            "value_clipfrac": stats["val/clipfrac"],
            "value_error": stats["val/error"],
            "ppo_epochs_run": stats["ppo/epochs"],
            **heldout,
        }
        self.history.append(metrics)
        return metrics

    def gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """Per-row values (rows, k) of every process, in the global batch's row order, as (k, rows)."""
        everyone = torch.cat(self.world.gather(local))
        order = torch.tensor(
            [row for rank in range(self.world.size) for row in self.plan.on_rank(rank).rows()]
        )
        return everyone[order.argsort()].T


def response_lengths(responses: list[torch.Tensor]) -> torch.Tensor:
    """Response lengths in tokens, without the decoder start token."""
    return torch.tensor([len(r) - 1 for r in responses], dtype=torch.float32)
