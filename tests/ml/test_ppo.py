from functools import partial

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from flan_t5_detox.ml import checkpoint, ppo
from flan_t5_detox.ml.loading import load_tokenizer
from flan_t5_detox.ml.ppo import TrainingDiverged, length_groups
from tests.helpers import eight_responses, tiny_config, tiny_trainer


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


def test_checkpoints_are_atomic_and_pruned(tiny_models, tmp_path):
    trainer = tiny_trainer(tiny_models, tiny_config())
    for step in (1, 2, 3):
        trainer.last_good.step = step
        checkpoint.write(tmp_path, trainer.last_good, keep=2)
    (tmp_path / ".tmp-leftover").mkdir()  # a crash mid-write leaves only a temporary
    (tmp_path / "step-000009").mkdir()  # and a damaged folder is skipped
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-000002", "step-000003", "step-000009"]
    assert checkpoint.latest(tmp_path).step == 3


def test_exploding_kl_aborts(tiny_models):
    trainer = tiny_trainer(tiny_models, tiny_config(learning_rate=0.5, max_kl=1e-9, max_ppo_steps=5))
    trainer.run_step()
    with pytest.raises(TrainingDiverged, match="exceeded max_kl"):
        trainer.run_step()
    assert trainer.last_good.step == 1


def test_length_groups_bound_rows_and_padding():
    lengths = [(10, 100), (12, 104), (10, 106), (10, 300), (10, 300), (10, 300), (10, 300), (10, 300)]
    groups = length_groups(lengths, max_rows=4)
    assert groups == [[0, 1, 2], [3, 4, 5, 6], [7]]
    for group in groups:
        padded = len(group) * (max(lengths[i][0] for i in group) + max(lengths[i][1] for i in group))
        assert padded <= 1.1 * sum(sum(lengths[i]) for i in group)
    assert length_groups(lengths, max_rows=1) == [[i] for i in range(8)]
    # the padding a short query would take on next to a long one counts too
    assert length_groups([(10, 100), (60, 100)], max_rows=4) == [[0], [1]]


# 0: every row alone; 10: whole mini-batches, as trl groups them
GROUPINGS = pytest.mark.parametrize("padding", [0.0, 10.0])


@GROUPINGS
def test_trimmed_forward_passes_equal_trl_own(tiny_models, monkeypatch, padding):
    """Same log-probs, values and masks as trl's padded passes, for the scoring passes (whole
    batch, several mini-batches) and a training pass (one mini-batch); where trl returns the
    logits, the training pass returns their per-token entropy. Rows alone or grouped."""
    from trl import PPOTrainer
    from trl.core import entropy_from_logits

    monkeypatch.setattr(ppo, "GROUP_PADDING", padding)
    trainer, queries, responses, padded = _batch_of_eight(tiny_models)
    for rows in (list(range(8)), [6, 0, 2, 7]):  # the mini-batch holds none of the longest responses
        qs, rs = [queries[i] for i in rows], [responses[i] for i in rows]
        inputs = {k: v[rows] for k, v in padded.items()}
        with torch.no_grad():
            args = (trainer.policy, qs, rs, inputs)
            ours = trainer.trl.batched_forward_pass(*args, return_logits=True)
            trls = PPOTrainer.batched_forward_pass(trainer.trl, *args, return_logits=True)
        mask = trls[3].bool()
        assert torch.equal(ours[3], trls[3])
        expected = (trls[0], entropy_from_logits(trls[1]), trls[2])
        for a, b in zip(ours[:3], expected):
            assert a.shape == b.shape
            torch.testing.assert_close(a[mask], b[mask], atol=1e-5, rtol=1e-5)


@GROUPINGS
def test_loss_and_gradients_equal_trl_own(tiny_models, monkeypatch, padding):
    """One training mini-batch through our pass + loss and through trl's: the same losses,
    statistics (entropy included) and gradients, whether its rows run alone or together (on
    one process, where our global means are trl's masked means)."""
    from trl import PPOTrainer

    monkeypatch.setattr(ppo, "GROUP_PADDING", padding)
    trainer, queries, responses, padded = _batch_of_eight(tiny_models)
    rows = [1, 4, 5, 3]
    qs, rs = [queries[i] for i in rows], [responses[i] for i in rows]
    inputs = {k: v[rows] for k, v in padded.items()}
    with torch.no_grad():
        old_logprobs, _, values, masks = trainer.trl.batched_forward_pass(trainer.policy, qs, rs, inputs)
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(values.shape, generator=generator) * masks
    old_logprobs = old_logprobs + 0.05 * torch.randn(values.shape, generator=generator)  # ratio != 1
    results = []
    for forward, loss in (
        (trainer.trl.batched_forward_pass, trainer.trl.loss),
        (partial(PPOTrainer.batched_forward_pass, trainer.trl), partial(PPOTrainer.loss, trainer.trl)),
    ):
        trainer.policy.zero_grad()
        logprobs, logits, vpreds, _ = forward(trainer.policy, qs, rs, inputs, return_logits=True)
        policy_loss, value_loss, stats = loss(old_logprobs, values, rewards, logits, vpreds, logprobs, masks)
        (policy_loss + value_loss).backward()
        grads = {n: p.grad.clone() for n, p in trainer.policy.named_parameters() if p.grad is not None}
        results.append((policy_loss, value_loss, stats, grads))
    (ours_p, ours_v, ours_stats, ours_grads), (trl_p, trl_v, trl_stats, trl_grads) = results
    torch.testing.assert_close(ours_p, trl_p)
    torch.testing.assert_close(ours_v, trl_v)
    assert ours_stats.keys() == trl_stats.keys()
    for key in trl_stats:
        ours_stat, trl_stat = ours_stats[key].double(), trl_stats[key].double()
        if key == "policy/ratio":  # per position, padding included: only the masked-in ones mean anything
            ours_stat, trl_stat = ours_stat[masks.bool()], trl_stat[masks.bool()]
        torch.testing.assert_close(ours_stat, trl_stat, atol=1e-5, rtol=1e-4, msg=key)
    assert ours_grads.keys() == trl_grads.keys() and len(trl_grads) > 0
    for name in trl_grads:
        torch.testing.assert_close(ours_grads[name], trl_grads[name], atol=1e-6, rtol=1e-4, msg=name)


def test_policy_scoring_reuses_the_rollout_encoder_states_and_nothing_else_does(tiny_models):
    """Inside `reusing_encoder_states`, the policy's first no-grad pass takes the given states
    (true states: the same outputs; zeroed states: different ones, so they were used), while
    the reference pass (adapter off), a training pass (grad) and a second policy pass (it
    could follow an update) still run the encoder."""
    from flan_t5_detox.ml.generation import encode

    trainer, queries, responses, padded = _batch_of_eight(tiny_models)
    pretrained = trainer.policy.pretrained_model

    def passes(given=None):
        def run(grad=False, adapter=True):
            with torch.set_grad_enabled(grad):
                if adapter:
                    out = trainer.trl.batched_forward_pass(trainer.policy, queries, responses, padded)
                else:
                    with pretrained.disable_adapter():
                        out = trainer.trl.batched_forward_pass(trainer.policy, queries, responses, padded)
            return [None if t is None else t.detach() for t in out]

        if given is None:
            return run(), run(adapter=False), run(grad=True), run()
        with trainer.trl.reusing_encoder_states(queries, given):
            return run(), run(adapter=False), run(grad=True), run()

    with torch.no_grad():  # a trained-looking detox adapter: with it off, the encoder differs
        for name, param in pretrained.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    states = encode(trainer.policy, trainer.tokenizer, queries)
    zeroed = [torch.zeros_like(s) for s in states]
    plain, reused, wrong = passes(), passes(states), passes(zeroed)
    mask = plain[0][3].bool()
    for a, b in zip(plain, reused):  # every pass: the same outputs
        torch.testing.assert_close(a[0][mask], b[0][mask], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a[2][mask], b[2][mask], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(wrong[0][0][mask], plain[0][0][mask], atol=1e-3)  # the states were used
    for i in (1, 2, 3):  # not by the reference pass, nor with grad, nor by a second policy pass
        torch.testing.assert_close(wrong[i][0][mask], plain[i][0][mask], atol=1e-5, rtol=1e-5)
    assert trainer.trl._rollout is None  # the block ends the reuse


def _batch_of_eight(tiny_models):
    trainer = tiny_trainer(tiny_models, tiny_config(batch_size=8, mini_batch_size=4))
    queries, responses = eight_responses(trainer, seed=3)
    padded = trainer.trl.prepare_model_inputs(queries, responses)  # as trl's step: the batch's width
    return trainer, queries, responses, padded


def test_too_short_responses_are_refused_before_any_forward(tiny_models):
    trainer = tiny_trainer(tiny_models, tiny_config(batch_size=8, mini_batch_size=4))
    queries = trainer.query_ids[:4]
    responses = [
        torch.tensor([0, 5, 6, 1]),
        torch.tensor([0, 7, 1]),
        torch.tensor([0, 8, 9, 1]),
        torch.tensor([0, 4, 4, 1]),
    ]
    inputs = trainer.trl.prepare_model_inputs(queries, responses)
    with pytest.raises(ValueError, match="too short"):
        trainer.trl.batched_forward_pass(trainer.policy, queries, responses, inputs)
