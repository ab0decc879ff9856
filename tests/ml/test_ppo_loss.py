"""The PPO loss maths (`ppo_loss`): GAE by its definition, `GlobalMean` on one process as trl's
masked statistics, and a mini-batch split over two gloo ranks giving one process's loss,
statistics and (after DDP's average) gradients."""

import torch
from trl import PPOConfig
from trl.core import masked_mean, masked_var, masked_whiten

from flan_t5_detox.ml.distributed import World
from flan_t5_detox.ml.ppo_loss import GlobalMean, generalized_advantages, ppo_loss
from tests.ml.ranks import on_gloo_ranks

CONFIG = PPOConfig(gamma=0.9, lam=0.8, cliprange=0.1, cliprange_value=0.15, vf_coef=0.3)
SPLIT = ([0, 1], [2, 3, 4])  # rank 0's rows, rank 1's rows: unequal token counts


def test_advantages_are_the_discounted_sums_of_td_errors():
    """A_t = sum_l (gamma lam)^l delta_(t+l), delta_t = r_t + gamma V_(t+1) - V_t, V past the end 0."""
    generator = torch.Generator().manual_seed(1)
    rewards, values = torch.randn(3, 5, generator=generator), torch.randn(3, 5, generator=generator)
    gamma, lam = 0.9, 0.8
    got = generalized_advantages(rewards.double(), values.double(), gamma, lam)
    nxt = torch.cat([values[:, 1:], torch.zeros(3, 1)], 1).double()
    delta = rewards.double() + gamma * nxt - values.double()
    for t in range(5):
        expected = sum((gamma * lam) ** k * delta[:, t + k] for k in range(5 - t))
        torch.testing.assert_close(got[:, t], expected)


def test_global_mean_on_one_process_is_trls_masked_statistics():
    generator = torch.Generator().manual_seed(2)
    values = torch.randn(4, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(4, 6, generator=generator) > 0.3).double()
    mean = GlobalMean(World(), mask)
    (got,) = mean(values)
    torch.testing.assert_close(got, masked_mean(values, mask))
    got.backward()
    torch.testing.assert_close(values.grad, mask / mask.sum())  # value and gradient
    (m,), (var,) = mean.moments(values.detach())
    torch.testing.assert_close(m, masked_mean(values.detach(), mask))
    torch.testing.assert_close(var, masked_var(values.detach(), mask))
    whitened = mean.whiten(values.detach())
    torch.testing.assert_close(whitened * mask, masked_whiten(values.detach(), mask) * mask)


def _minibatch():
    """Five rows of the loss's inputs, of 2..6 masked-in tokens each; vpreds and logprobs are leaves."""
    generator = torch.Generator().manual_seed(3)

    def randn():
        return torch.randn(5, 7, generator=generator)

    counts = torch.tensor([2, 6, 3, 5, 4])
    mask = (torch.arange(7)[None] < counts[:, None]).float()
    old_logprobs, values, rewards, entropy = randn(), randn(), randn(), randn().abs()
    vpreds, logprobs = values + 0.2 * randn(), old_logprobs + 0.1 * randn()
    return dict(
        old_logprobs=old_logprobs, values=values, rewards=rewards, entropy=entropy, mask=mask,
        vpreds=vpreds.requires_grad_(), logprobs=logprobs.requires_grad_(),
    )  # fmt: skip


def _loss_on(world, rows):
    """ppo_loss over these rows: scalar statistics, per-position advantages, and the gradients."""
    batch = {k: v[rows].detach().requires_grad_(v.requires_grad) for k, v in _minibatch().items()}
    policy_loss, value_loss, stats = ppo_loss(CONFIG, world, **batch)
    (policy_loss + value_loss).backward()
    scalars = {k: float(v) for k, v in stats.items() if v.numel() == 1}
    return {
        "losses": [float(policy_loss), float(value_loss)],
        "stats": scalars,
        "advantages": (stats["policy/advantages"] * batch["mask"]).tolist(),
        "grads": [batch["vpreds"].grad.tolist(), batch["logprobs"].grad.tolist()],
    }


def _loss_on_my_rows(world):
    return _loss_on(world, SPLIT[world.rank])


def test_two_ranks_compute_one_processs_loss_statistics_and_averaged_gradients(tmp_path):
    ranks = on_gloo_ranks(_loss_on_my_rows, tmp_path)
    whole = _loss_on(World(), [0, 1, 2, 3, 4])
    for rank in ranks:  # every rank reports the global figures
        torch.testing.assert_close(torch.tensor(rank["losses"]), torch.tensor(whole["losses"]))
        assert rank["stats"].keys() == whole["stats"].keys()
        for name, value in whole["stats"].items():
            torch.testing.assert_close(rank["stats"][name], value, atol=1e-6, rtol=1e-5, msg=name)
    for rows, rank in zip(SPLIT, ranks):  # whitened over both ranks; DDP averages the 2 gradients
        torch.testing.assert_close(torch.tensor(rank["advantages"]), torch.tensor(whole["advantages"])[rows])
        for got, expected in zip(rank["grads"], whole["grads"]):
            torch.testing.assert_close(torch.tensor(got) / 2, torch.tensor(expected)[rows])
