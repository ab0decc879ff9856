import pytest
import torch

from flan_t5_detox.fast import logprobs
from flan_t5_detox.fast.logprobs import chosen_logprobs


def _reference(logits, labels):
    """The plain way: a full log-softmax, then pick the labels' column."""
    logp = torch.log_softmax(logits[:, : labels.shape[1]].float(), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(2, labels[..., None])[..., 0], entropy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("spread", [4.0, 100.0])  # 100: most terms fall below the floor
def test_logprobs_entropy_and_gradient_equal_the_full_log_softmax(monkeypatch, dtype, spread):
    monkeypatch.setattr(logprobs, "CHUNK_ROWS", 3)  # several chunks per row, the last one short
    generator = torch.Generator().manual_seed(0)
    logits = (spread * torch.randn(2, 9, 50, generator=generator)).to(dtype)
    labels = torch.randint(0, 50, (2, 8), generator=generator)  # the last position is ignored
    upstream = torch.randn(2, 8, generator=generator)

    ours_in = logits.clone().requires_grad_()
    ours, ours_entropy = chosen_logprobs(ours_in, labels, with_entropy=True)
    (ours * upstream).sum().backward()
    ref_in = logits.clone().requires_grad_()
    ref, ref_entropy = _reference(ref_in, labels)
    (ref * upstream).sum().backward()

    assert ours.dtype == torch.float32 and ours.shape == (2, 8)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_entropy, ref_entropy, atol=1e-5, rtol=1e-5)
    assert ours_in.grad.dtype == dtype
    assert torch.all(ours_in.grad[:, 8:] == 0)
    # fp32: x - lse is rounded at the logits' scale; bf16: one rounding of values up to 1
    tol = 3e-7 * spread if dtype == torch.float32 else 4e-3
    torch.testing.assert_close(ours_in.grad.float(), ref_in.grad.float(), atol=tol, rtol=tol)


def test_entropy_is_skipped_unless_asked_and_never_differentiable():
    logits = torch.randn(1, 4, 10, requires_grad=True)
    labels = torch.tensor([[1, 2, 3]])
    assert chosen_logprobs(logits, labels)[1] is None
    _, entropy = chosen_logprobs(logits, labels, with_entropy=True)
    assert not entropy.requires_grad
    # a uniform distribution over 10 tokens has entropy log(10)
    _, uniform = chosen_logprobs(torch.zeros(1, 4, 10), labels, with_entropy=True)
    torch.testing.assert_close(uniform, torch.full((1, 3), float(torch.tensor(10.0).log())))
