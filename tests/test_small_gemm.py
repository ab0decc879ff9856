import shutil

import pytest
import torch

from flan_t5_detox import small_gemm, small_gemm_build


def test_the_kernel_builds_and_loads_on_this_machine():
    """CI machines have a C compiler and an AVX2 CPU: a fallback here would hide a broken build."""
    assert shutil.which("cc") or shutil.which("gcc")
    assert small_gemm.available(), "see the warning logged by flan_t5_detox.small_gemm"


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 12, 13, 16, 32])
@pytest.mark.parametrize("n, k", [(4, 8), (768, 768), (1003, 64), (48, 2048), (5, 16)])
def test_products_match_torch(rows, n, k):
    """Every row-group remainder (1-3 rows), weight rows not a multiple of 4 (the tail), each
    thread's share, and the two shapes K takes in T5-base."""
    torch.manual_seed(rows * n + k)
    x, weight = torch.randn(rows, k), torch.randn(n, k)
    assert small_gemm.takes(x, weight)
    out = small_gemm.linear(x, weight)
    expected = x.double() @ weight.double().T
    torch.testing.assert_close(out.double(), expected, atol=1e-4 * k**0.5, rtol=1e-5)


def test_leading_dimensions_and_non_contiguous_input_are_kept():
    torch.manual_seed(0)
    weight = torch.randn(40, 32)
    x = torch.randn(3, 32, 2)[..., 0][:, None, :]  # (3, 1, 32), strided
    assert small_gemm.takes(x, weight)
    out = small_gemm.linear(x, weight)
    assert out.shape == (3, 1, 40)
    torch.testing.assert_close(out, torch.nn.functional.linear(x, weight), atol=1e-5, rtol=1e-5)


def test_the_kernel_runs_on_torchs_openmp_threads():
    """Bound to torch's own OpenMP runtime, the kernel follows torch.set_num_threads (a second
    runtime would keep its own thread count, and its threads would spin against torch's), and
    one thread or two give the same products."""
    torch.manual_seed(0)
    x, weight = torch.randn(9, 768), torch.randn(2051, 768)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert small_gemm._library().small_gemm_max_threads() == 1
        one = small_gemm.linear(x, weight)
        torch.set_num_threads(2)
        assert small_gemm._library().small_gemm_max_threads() == 2
        two = small_gemm.linear(x, weight)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(one, two, atol=0, rtol=0)


@pytest.mark.parametrize(
    "x, weight",
    [
        (torch.randn(33, 32), torch.randn(8, 32)),  # more rows than it was measured for
        (torch.randn(2, 12), torch.randn(8, 12)),  # K not a multiple of 8
        (torch.randn(2, 32, dtype=torch.bfloat16), torch.randn(8, 32, dtype=torch.bfloat16)),
        (torch.randn(2, 32), torch.randn(32, 8).T),  # weight not contiguous
        (torch.randn(2, 32, requires_grad=True), torch.randn(8, 32)),  # autograd needs torch's op
    ],
)
def test_operands_the_kernel_does_not_take_go_to_torch(x, weight):
    assert not small_gemm.takes(x, weight)
    out = small_gemm.linear(x, weight)
    torch.testing.assert_close(out, torch.nn.functional.linear(x, weight))
    assert out.requires_grad == x.requires_grad


def test_a_failed_build_says_which_command_failed_and_why(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="false .* failed:"):
        small_gemm_build.build(tmp_path, compiler="false")
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="no C compiler"):
        small_gemm_build.build(tmp_path)
    assert not list(tmp_path.glob("*.so"))


def test_a_build_lands_under_a_name_that_follows_source_and_flags(tmp_path, monkeypatch):
    built = small_gemm_build.build(tmp_path)
    assert built.name == small_gemm_build.library_name() and built.stat().st_size > 0
    monkeypatch.setattr(small_gemm_build, "COMPILE_FLAGS", [*small_gemm_build.COMPILE_FLAGS, "-DVARIANT"])
    assert small_gemm_build.library_name() != built.name
