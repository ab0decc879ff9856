"""The few-row fp32 product decoding is made of, `x @ w.T`, by our own kernel (small_gemm.c).

torch 1.13.1's MKL 2020 runs these products well below the machine's limits on AVX2 CPUs
(bench/RESULTS.md). The kernel is compiled with the system C compiler on first use and cached;
`DETOX_KERNEL_DIR` may hold a prebuilt copy (the job image builds one with small_gemm_build.py).
Everything else falls back to torch: no compiler, a CPU without AVX2 and FMA, no way to tell
torch's OpenMP runtime, or operands the kernel does not take. `available()` says whether the
kernel is loaded; `linear` is always safe to call, `product` only where `takes` says so."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
from pathlib import Path

import torch

from .small_gemm_build import build, library_name

log = logging.getLogger(__name__)

# Faster than torch's products at every row count measured, 1-32 (bench/RESULTS.md); decoding
# batches have 16 rows by default. Beyond 32 it was not measured: torch takes those.
MAX_ROWS = 32


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flan-t5-detox" / "kernels"


def _torch_openmp_runtime() -> str | None:
    """The GNU OpenMP library torch has loaded in this process: its wheels bundle a renamed copy
    (other wheels, e.g. sentencepiece, bring their own), else the one libgomp mapped."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = {line.split()[-1] for line in maps.splitlines() if "libgomp" in line.rsplit("/", 1)[-1]}
    torch_dir = str(Path(torch.__file__).parent) + os.sep
    own = [p for p in paths if p.startswith(torch_dir)]
    if len(own) == 1:
        return own[0]
    return paths.pop() if len(paths) == 1 else None


@functools.cache
def _library() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return _unavailable(f"built for Linux x86-64, not {platform.system()} {platform.machine()}")
    runtime = _torch_openmp_runtime()
    if runtime is None:
        return _unavailable("cannot tell which GNU OpenMP runtime torch uses")
    prebuilt = os.environ.get("DETOX_KERNEL_DIR")
    try:
        path = Path(prebuilt) / library_name() if prebuilt else None
        if path is None or not path.is_file():
            path = cache_dir() / library_name()
        if not path.is_file():
            path = build(cache_dir())
        ctypes.CDLL(runtime, mode=ctypes.RTLD_GLOBAL)  # the OpenMP symbols the kernel leaves open
        lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError) as error:
        return _unavailable(str(error))
    if not lib.small_gemm_cpu_supported():
        return _unavailable("the CPU lacks AVX2 or FMA")
    pointer, size = ctypes.c_void_p, ctypes.c_long
    lib.small_gemm.argtypes = [pointer, size, pointer, size, size, pointer]  # x, M, w, N, K, y
    lib.small_gemm.restype = None
    log.info("small-row GEMM kernel: %s", path)
    return lib


def _unavailable(reason: str) -> None:
    log.warning("small-row GEMM kernel unavailable, decoding uses torch's products: %s", reason)
    return None


def available() -> bool:
    return _library() is not None


def takes(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the kernel computes `x @ weight.T` (else the caller uses torch)."""
    return (
        x.dtype == weight.dtype == torch.float32
        and x.shape[-1] % 8 == 0
        and x.numel() // x.shape[-1] <= MAX_ROWS
        and weight.is_contiguous()
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and available()
    )


def product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`x @ weight.T` by the kernel; only for operands it `takes` (callers that checked already)."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    out = rows.new_empty(rows.shape[0], weight.shape[0])
    _library().small_gemm(
        rows.data_ptr(), rows.shape[0], weight.data_ptr(), weight.shape[0], weight.shape[1], out.data_ptr()
    )
    return out.view(*x.shape[:-1], weight.shape[0])


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`torch.nn.functional.linear(x, weight)` without bias, by the kernel where it takes the operands."""
    return product(x, weight) if takes(x, weight) else torch.nn.functional.linear(x, weight)
