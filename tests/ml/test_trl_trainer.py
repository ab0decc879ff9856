"""The trl subclass (`trl_trainer.TrimmedPPOTrainer`): trimmed forward passes and loss equal trl's
own, the rollout's encoder states are reused by the scoring pass only, `ppo_config` gives each
process its share of the global batch, and target_kl stops the epochs as trl's early_stopping."""

import copy
from functools import partial

import pytest
import torch
from trl import PPOTrainer

from flan_t5_detox.contract.settings import TrainConfig
from flan_t5_detox.ml.distributed import World
from flan_t5_detox.ml.generation import run_encoder
from flan_t5_detox.ml.grouping import GROUP_PADDING
from flan_t5_detox.ml.trl_trainer import EncoderStates, ppo_config
from tests.helpers import eight_responses, tiny_config, tiny_trainer


def test_ppo_config_gives_each_process_its_share_of_the_global_batch():
    config = TrainConfig(batch_size=16, mini_batch_size=8, learning_rate=2e-4, seed=5)
    one, two = ppo_config(config), ppo_config(config, World(rank=1, size=2))
    assert (one.batch_size, one.mini_batch_size) == (16, 8)
    assert (two.batch_size, two.mini_batch_size) == (8, 4)
    assert one.learning_rate == two.learning_rate == 2e-4 and one.seed == two.seed == 5


def test_world_and_group_padding_are_the_trainers_own(tiny_models):
    """Given at construction, held per trainer: two trainers never share them."""
    trainer = tiny_trainer(tiny_models, tiny_config())
    assert trainer.trl.world is trainer.world and trainer.trl.group_padding == GROUP_PADDING
    other = tiny_trainer(tiny_models, tiny_config())
    other.trl.group_padding = 0.0
    assert trainer.trl.group_padding == GROUP_PADDING
    assert "world" not in type(trainer.trl).__dict__ and "group_padding" not in type(trainer.trl).__dict__


# 0: every row alone; 10: whole mini-batches, as trl groups them
GROUPINGS = pytest.mark.parametrize("padding", [0.0, 10.0])


@GROUPINGS
def test_trimmed_forward_passes_equal_trl_own(tiny_models, padding):
    """Same log-probs, values and masks as trl's padded passes, for the scoring passes (whole
    batch, several mini-batches) and a training pass (one mini-batch); where trl returns the
    logits, the training pass returns their per-token entropy. Rows alone or grouped."""
    from trl import PPOTrainer
    from trl.core import entropy_from_logits

    trainer, queries, responses, padded = _batch_of_eight(tiny_models)
    trainer.trl.group_padding = padding
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
def test_loss_and_gradients_equal_trl_own(tiny_models, padding):
    """One training mini-batch through our pass + loss and through trl's: the same losses,
    statistics (entropy included) and gradients, whether its rows run alone or together (on
    one process, where our global means are trl's masked means)."""
    trainer, queries, responses, padded = _batch_of_eight(tiny_models)
    trainer.trl.group_padding = padding
    minibatch = _training_minibatch(trainer, queries, responses, padded)
    ours_p, ours_v, ours_stats, ours_grads = _loss_and_gradients(
        trainer, trainer.policy, minibatch, ours=True
    )
    trl_p, trl_v, trl_stats, trl_grads = _loss_and_gradients(trainer, trainer.policy, minibatch, ours=False)
    masks = minibatch[3][3]
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


def _training_minibatch(trainer, queries, responses, padded, rows=(1, 4, 5, 3)):
    """A training mini-batch's rows, model inputs and the step's fixed tensors (old log-probs,
    values, rewards, masks), with old log-probs moved off the current ones so the ratio is not 1."""
    rows = list(rows)
    qs, rs = [queries[i] for i in rows], [responses[i] for i in rows]
    inputs = {k: v[rows] for k, v in padded.items()}
    with torch.no_grad():
        old_logprobs, _, values, masks = trainer.trl.batched_forward_pass(trainer.policy, qs, rs, inputs)
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(values.shape, generator=generator) * masks
    old_logprobs = old_logprobs + 0.05 * torch.randn(values.shape, generator=generator)
    return qs, rs, inputs, (old_logprobs, values, rewards, masks)


def _loss_and_gradients(trainer, model, minibatch, ours: bool):
    """`model` through our pass + loss (`ours`) or trl's: (policy loss, value loss, statistics,
    gradients by parameter name)."""
    qs, rs, inputs, (old_logprobs, values, rewards, masks) = minibatch
    if ours:
        forward, loss = trainer.trl.batched_forward_pass, trainer.trl.loss
    else:
        forward, loss = (
            partial(PPOTrainer.batched_forward_pass, trainer.trl),
            partial(PPOTrainer.loss, trainer.trl),
        )
    model.zero_grad()
    logprobs, logits, vpreds, _ = forward(model, qs, rs, inputs, return_logits=True)
    policy_loss, value_loss, stats = loss(old_logprobs, values, rewards, logits, vpreds, logprobs, masks)
    (policy_loss + value_loss).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return policy_loss, value_loss, stats, grads


def _rms(tensor: torch.Tensor) -> float:
    return float(tensor.double().pow(2).mean().sqrt())


def _as_close_to_truth(ours, trls, truth, what: str) -> None:
    """bf16 keeps 8 significant bits, and our passes and trl's round at different points (GEMMs
    of other shapes; native bf16 kernels round differently again), so they cannot agree to a
    fixed tolerance on every CPU. Both are measured against one truth instead: the same
    (bf16-rounded) weights run in fp32. Ours must be no further from it than trl's, within a
    factor of 2 on the RMS error, plus fp32's own agreement (1e-4 of the figure). A wrong mask,
    token, normaliser or encoder state is off by the quantity's own size.

    The factor holds for RMS errors over many numbers. A few numbers (the value head's bias
    gradient: one sum over every token) are a few draws of rounding noise, whose ratio has no
    bound: they get 4 units in the last place of bf16 (8 significant bits) besides."""
    ours, trls, truth = (torch.as_tensor(t).double() for t in (ours, trls, truth))
    bound = 2 * _rms(trls - truth) + 1e-4 * _rms(truth) + 1e-12
    if truth.numel() < 16:
        bound += 4 * 2**-8 * _rms(truth)
    assert _rms(ours - truth) <= bound, f"{what}: RMS error {_rms(ours - truth):.3g} > {bound:.3g}"


@pytest.mark.numerics
def test_trimmed_forward_passes_in_bf16_are_as_close_to_fp32_as_trl_own(tiny_models):
    """The scoring passes of the whole batch in bf16: log-probs, entropy and values."""
    from trl.core import entropy_from_logits

    trainer, queries, responses, padded = _batch_of_eight(tiny_models, dtype="bfloat16")
    exact = copy.deepcopy(trainer.policy).float()
    args = (queries, responses, padded)
    with torch.no_grad():
        ours = trainer.trl.batched_forward_pass(trainer.policy, *args, return_logits=True)
        trls = PPOTrainer.batched_forward_pass(trainer.trl, trainer.policy, *args, return_logits=True)
        truth = PPOTrainer.batched_forward_pass(trainer.trl, exact, *args, return_logits=True)
    mask = truth[3].bool()
    assert torch.equal(ours[3], truth[3]) and torch.equal(trls[3], truth[3])
    trls = (trls[0], entropy_from_logits(trls[1]), trls[2])
    truth = (truth[0], entropy_from_logits(truth[1]), truth[2])
    for what, a, b, c in zip(("log-probs", "entropy", "values"), ours, trls, truth):
        _as_close_to_truth(a[mask], b[mask], c[mask], what)


@pytest.mark.numerics
def test_gradients_in_bf16_are_as_close_to_fp32_as_trl_own(tiny_models):
    """One training mini-batch in bf16 (frozen weights bf16, the LoRA and value head fp32): the
    gradients of every trained weight. The losses and statistics come from the same code as in
    fp32, where they equal trl's, applied to the per-token log-probs, entropies and values the test
    above bounds. Each of them is one mean, one draw of rounding noise: two such draws have no
    bounded ratio, so they are only checked to be present and finite here."""
    trainer, queries, responses, padded = _batch_of_eight(tiny_models, dtype="bfloat16")
    exact = copy.deepcopy(trainer.policy).float()
    minibatch = _training_minibatch(trainer, queries, responses, padded)
    ours = _loss_and_gradients(trainer, trainer.policy, minibatch, ours=True)
    trls = _loss_and_gradients(trainer, trainer.policy, minibatch, ours=False)
    truth = _loss_and_gradients(trainer, exact, minibatch, ours=False)
    assert ours[2].keys() == trls[2].keys() == truth[2].keys()
    assert all(torch.isfinite(figure).all() for figure in (ours[0], ours[1], *ours[2].values()))
    assert ours[3].keys() == trls[3].keys() == truth[3].keys() and len(truth[3]) > 0
    for name in truth[3]:
        _as_close_to_truth(ours[3][name], trls[3][name], truth[3][name], name)


def test_policy_scoring_reuses_the_rollout_encoder_states_and_nothing_else_does(tiny_models):
    """A pass given encoder states takes them (true states: the same outputs; zeroed states:
    different ones, so they were used). In trl's scoring passes the policy's takes the rollout's,
    the reference (adapter off) runs its own encoder in the rollout's batches, and in a PPO step
    the training passes (grad) run the encoder. States of other queries are refused."""
    trainer, queries, responses, padded = _batch_of_eight(tiny_models)
    pretrained = trainer.policy.pretrained_model

    def run(encoded=None, adapter=True):
        with torch.no_grad():
            if adapter:
                return trainer.trl.batched_forward_pass(
                    trainer.policy, queries, responses, padded, False, encoded
                )
            with pretrained.disable_adapter():
                return trainer.trl.batched_forward_pass(
                    trainer.policy, queries, responses, padded, False, encoded
                )

    with torch.no_grad():  # a trained-looking detox adapter: with it off, the encoder differs
        for name, param in pretrained.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    states = run_encoder(trainer.policy, trainer.tokenizer, queries)
    zeroed = EncoderStates(queries, [torch.zeros_like(s) for s in states], 3)
    plain, reused, wrong = run(), run(EncoderStates(queries, states, 8)), run(zeroed)
    plain_reference = run(adapter=False)
    mask = plain[3].bool()
    # The given states are the encoder's for another batch shape: the same up to the rounding of
    # GEMMs of that shape, which the trained-looking adapter amplifies to 5e-5 in log-probs of up to
    # 20 nats (measured under the kernels of each CPU kind, with MKL's thread count of the moment).
    # 1e-3 keeps a margin of 20 over that, and of 18,000 under what wrong states do (18 nats).
    torch.testing.assert_close(plain[0][mask], reused[0][mask], atol=1e-3, rtol=0)
    torch.testing.assert_close(plain[2][mask], reused[2][mask], atol=1e-4, rtol=0)
    assert not torch.allclose(wrong[0][mask], plain[0][mask], atol=1e-3)  # the states were used

    # trl's scoring passes: the policy's takes the given states, the reference runs its own encoder
    logprobs, _, _, ref_logprobs = trainer.trl.scoring_passes(
        trainer.policy, queries, responses, padded, zeroed
    )
    torch.testing.assert_close(logprobs[mask], wrong[0][mask])
    torch.testing.assert_close(ref_logprobs[mask], plain_reference[0][mask], atol=1e-3, rtol=0)

    # a PPO step: only its two scoring passes get states, the given ones only the policy's
    given = []
    forward = trainer.trl.batched_forward_pass

    def recording(model, qs, rs, inputs, return_logits=False, encoded=None):
        given.append((torch.is_grad_enabled(), encoded))
        return forward(model, qs, rs, inputs, return_logits, encoded)

    trainer.trl.batched_forward_pass = recording
    trainer.trl.ppo_step(queries, responses, torch.zeros(8), [[[0, 1, 2, 3], [4, 5, 6, 7]]], zeroed)
    assert [grad for grad, _ in given] == [False, False, True, True]
    assert given[0][1] is zeroed and given[1][1] is not zeroed and given[1][1].batch_size == 3
    assert given[2][1] is None and given[3][1] is None

    with pytest.raises(ValueError, match="other queries"):
        run(EncoderStates(queries[::-1], states[::-1], 8))


def _batch_of_eight(tiny_models, dtype="float32"):
    trainer = tiny_trainer(tiny_models, tiny_config(batch_size=8, mini_batch_size=4, dtype=dtype))
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


def test_log_probs_do_not_depend_on_what_else_is_in_the_batch(tiny_models):
    """Padding must not leak: the same response gets the same per-token log-probs alone or in a batch."""
    trainer = tiny_trainer(tiny_models, tiny_config(batch_size=8, mini_batch_size=8))
    queries, responses = eight_responses(trainer, seed=1)
    assert len({len(r) for r in responses}) > 2 and len({len(q) for q in queries}) > 2  # real padding happens

    def logprobs(qs, rs, fbs):
        trainer.trl.config.mini_batch_size = fbs
        inputs = trainer.trl.prepare_model_inputs(qs, rs)
        with torch.no_grad():
            lp, _, _, masks = trainer.trl.batched_forward_pass(trainer.policy, qs, rs, inputs)
        return [row[mask.bool()] for row, mask in zip(lp, masks)]

    batched = logprobs(queries, responses, 8)
    for i in range(8):
        alone = logprobs([queries[i]], [responses[i]], 1)[0]
        assert len(alone) == len(responses[i]) - 2  # trl scores tokens 2..n of a seq2seq response
        torch.testing.assert_close(batched[i], alone, atol=1e-5, rtol=1e-5)


def test_target_kl_stops_the_ppo_epochs_as_trls_early_stopping_does(tiny_models):
    """A step of 4 epochs of 2 mini-batches, with a learning rate that moves the policy far in one
    update: with target_kl the epochs stop after the first mini-batch whose policy KL (measured
    before its update) breaches 1.5 x target_kl, the second one; without it all 4 epochs run.
    The first mini-batch's policy KL is 0 (no update yet), the second's 0.2 here: target_kl=0.01
    stops at the second with a margin of 13x, whatever the CPU's rounding."""
    settings = dict(ppo_epochs=4, learning_rate=0.05, batch_size=8, mini_batch_size=4)
    stopped = tiny_trainer(tiny_models, tiny_config(target_kl=0.01, **settings)).run_step().metrics
    assert stopped["ppo_epochs_run"] == 1.0  # 2 of 8 mini-batch updates
    assert tiny_trainer(tiny_models, tiny_config(**settings)).run_step().metrics["ppo_epochs_run"] == 4.0

    # The rule is trl's own `_early_stop`, on one mini-batch's policy KL.
    trl = tiny_trainer(tiny_models, tiny_config(target_kl=0.1)).trl
    assert trl.config.early_stopping and trl.config.target_kl == 0.1
    for policy_kl in (0.0, 0.149, 0.151, 3.0):
        kl = torch.tensor(policy_kl, dtype=torch.float64)
        assert trl.stops_early({"policy/policykl": kl}) == PPOTrainer._early_stop(trl, kl)
    assert not ppo_config(TrainConfig()).early_stopping  # off by default
