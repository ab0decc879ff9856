"""The PPO loop (`ppo.DetoxTrainer`): a step raises a reward, replays from a snapshot, logs the
global batch's metrics, and stops on divergence with the last good step kept."""

import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from flan_t5_detox.ml import checkpoint
from flan_t5_detox.ml.loading import load_tokenizer
from flan_t5_detox.ml.ppo import TrainingDiverged, response_lengths
from tests.helpers import tiny_config, tiny_trainer


def _even_token_share(tokenizer):
    """Scripted reward: the share of a response's tokens (re-encoded from its text) with an even id."""

    def reward(_queries, responses):
        rows = tokenizer(responses, add_special_tokens=False).input_ids
        return torch.tensor([float(np.mean([i % 2 == 0 for i in row])) if row else 0.0 for row in rows])

    return reward


def _pooled_trend(runs: list[list[float]]):
    """Slope of reward on step over several runs, each with its own intercept (a fixed-effects
    regression), with its one-sided p-value: does the reward rise within runs?"""
    x = np.concatenate([np.arange(len(r)) - (len(r) - 1) / 2 for r in runs])
    y = np.concatenate([np.asarray(r) - np.mean(r) for r in runs])
    slope = float(x @ y / (x @ x))
    dof = len(y) - len(runs) - 1
    stderr = float(np.sqrt(((y - slope * x) ** 2).sum() / dof / (x @ x)))
    return slope, float(scipy_stats.t.sf(slope / stderr, dof))


@pytest.mark.numerics
def test_ppo_measurably_raises_a_scripted_reward(tiny_models):
    """One run's trajectory is chaotic: float kernels of another CPU kind sample other tokens,
    and its 30-step trend then ranges from p = 2e-7 to p = 0.02 (measured under the kinds
    tests/cpu_kinds.py lists). Three seeds pooled give the test its power on every kind."""
    reward_fn = _even_token_share(load_tokenizer(tiny_models.base_model))
    runs = []
    for seed in (0, 1, 2):
        config = tiny_config(
            batch_size=16,
            mini_batch_size=4,
            ppo_epochs=2,
            learning_rate=3e-3,
            init_kl_coef=0.01,
            output_min_length=8,
            output_max_length=16,
            max_ppo_steps=30,
            seed=seed,
        )
        trainer = tiny_trainer(tiny_models, config, reward_fn=reward_fn)
        runs.append([trainer.run_step().metrics["reward_mean"] for _ in range(30)])
    rises = [np.mean(r[-5:]) - np.mean(r[:5]) for r in runs]
    slope, p = _pooled_trend(runs)
    print(f"scripted reward: last 5 minus first 5 steps {np.round(rises, 3)}; slope {slope:.4f}, p {p:.1e}")
    assert np.mean(rises) > 0
    assert slope > 0 and p < 1e-3


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_kl_at_step_0_is_exactly_0(tiny_models, dtype):
    """Before the first update the policy is its reference (the fresh LoRA adds exact zeros), so
    their scoring passes must compute the same numbers. The policy's takes the rollout's encoder
    states: the reference must run its encoder in the same batches, or GEMMs of other shapes
    round otherwise (in bf16, a KL of order 1e-2 at a step where the models are one)."""
    trainer = tiny_trainer(tiny_models, tiny_config(dtype=dtype, generation_batch_size=3))
    assert trainer.policy.pretrained_model.dtype == getattr(torch, dtype)
    first = trainer.run_step()
    assert first.metrics["kl"] == 0.0
    assert trainer.run_step().metrics["kl"] != 0.0  # the same figure, once the models differ


def test_the_pooled_trend_finds_a_rise_and_no_rise_in_noise():
    rng = np.random.default_rng(0)
    rising = [list(0.01 * np.arange(30) + rng.normal(0, 0.05, 30) + offset) for offset in (0, 1, 5)]
    slope, p = _pooled_trend(rising)
    assert slope == pytest.approx(0.01, abs=0.003) and p < 1e-6  # the offsets do not hide it
    flat = [list(rng.normal(0, 0.05, 30)) for _ in range(3)]
    assert _pooled_trend(flat)[1] > 0.01


def test_snapshot_restore_replays_the_same_next_step(tiny_models, tmp_path):
    config = tiny_config(learning_rate=1e-3)
    trainer = tiny_trainer(tiny_models, config)
    trainer.run_step()
    checkpoint.write(tmp_path, trainer.last_good)
    expected = trainer.run_step().metrics

    fresh = tiny_trainer(tiny_models, config)
    fresh.restore(checkpoint.latest(tmp_path))
    assert fresh.step == 1
    got = fresh.run_step().metrics
    for name in ("reward_mean", "kl", "returns_mean", "policy_loss", "response_length_mean"):
        assert got[name] == pytest.approx(expected[name], rel=1e-4, abs=1e-6), name


def test_exploding_kl_aborts(tiny_models):
    """Step 1 samples from the starting policy: its KL is fp32 rounding between two passes of the
    same weights (0 on some CPUs, 2.4e-7 measured on an AVX2 AMD EPYC; each log-prob moves by about
    1e-6 at most, summed over at most 60 tokens: under 1e-4). max_kl=1e-3 sits above that bound
    and far below what a learning rate of 0.5 does in one update."""
    trainer = tiny_trainer(tiny_models, tiny_config(learning_rate=0.5, max_kl=1e-3, max_ppo_steps=5))
    trainer.run_step()
    assert abs(trainer.history[-1]["kl"]) < 1e-4
    with pytest.raises(TrainingDiverged, match="exceeded max_kl"):
        trainer.run_step()
    assert trainer.last_good.step == 1


def test_non_finite_rewards_abort_before_any_update(tiny_models):
    def reward_fn(queries, responses):
        return torch.tensor([math.nan] + [0.5] * (len(responses) - 1))

    trainer = tiny_trainer(tiny_models, tiny_config(), reward_fn=reward_fn)
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}
    with pytest.raises(TrainingDiverged, match="non-finite rewards at step 1"):
        trainer.run_step()
    assert trainer.step == 0 and trainer.last_good.step == 0 and trainer.history == []
    after = dict(trainer.policy.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_a_step_logs_the_global_batch_and_snapshots_the_state_after_it(tiny_models):
    """The reward and length figures are those of the step's texts and tokens, every phase is
    timed, the history grows by the step, and the snapshot holds the state after it."""
    config = tiny_config()
    trainer = tiny_trainer(
        tiny_models, config, reward_fn=lambda qs, rs: torch.tensor([float(len(r)) for r in rs])
    )
    result = trainer.run_step()
    metrics = result.metrics
    assert len(result.queries) == len(result.responses) == config.batch_size
    lengths = [float(len(r)) for r in result.responses]
    assert metrics["step"] == 1
    assert metrics["reward_mean"] == pytest.approx(np.mean(lengths))
    assert metrics["reward_std"] == pytest.approx(np.std(lengths, ddof=1))
    assert 0 < metrics["response_length_mean"] < config.output_max_length
    times = [metrics[f"time_{phase}"] for phase in ("generate", "reward", "ppo")]
    assert all(t > 0 for t in times) and metrics["time_step"] >= sum(times)
    assert trainer.history == [metrics]
    assert trainer.last_good.step == 1 and trainer.last_good.history == [metrics]
    assert trainer.last_good.kl_coef == pytest.approx(trainer.trl.kl_ctl.value)


def test_response_lengths_leave_out_the_decoder_start_token():
    lengths = response_lengths([torch.tensor([0, 5, 6, 1]), torch.tensor([0, 7])])
    assert lengths.tolist() == [3.0, 1.0] and lengths.dtype == torch.float32
