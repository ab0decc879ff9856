"""Facts about the machine a job runs on, and the settings that follow from them: the CPU, the
compute dtype, MKL's kernels, the intra-op threads, the versions of the stack."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

AVX512_CORE = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
NATIVE_BF16 = {"avx512_bf16", "amx_bf16"}
VERSIONED = ("flan-t5-detox", "torch", "transformers", "peft", "trl", "accelerate", "rouge_score", "numpy")


def cpuinfo(field: str) -> str:
    """The first value of `field` in /proc/cpuinfo ("" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> set[str]:
    return set(cpuinfo("flags").split())


def cpu_model() -> str:
    return cpuinfo("model name") or "unknown"


def pick_dtype(requested: str = "auto", flags: set[str] | None = None) -> torch.dtype:
    """bf16 only where the CPU computes it natively: emulated bf16 (e.g. ml.m5) is slower than fp32."""
    if requested == "float32":
        return torch.float32
    if requested == "bfloat16":
        return torch.bfloat16
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    flags = cpu_flags() if flags is None else flags
    return torch.bfloat16 if NATIVE_BF16 & flags else torch.float32


def mkl_cpu_type(vendor: str | None = None, flags: set[str] | None = None) -> str | None:
    """The MKL_DEBUG_CPU_TYPE that unlocks MKL's fast kernels on a CPU (default: this one), or
    None to leave MKL be.

    torch 1.13.1 ships MKL 2020.0, which runs generic kernels on AMD CPUs whatever their SIMD;
    this value makes it take its AVX-512 (7) or AVX2 (5) kernels (bench/RESULTS.md has the
    measured effect). Intel CPUs get the right kernels without it."""
    vendor = cpuinfo("vendor_id") if vendor is None else vendor
    flags = cpu_flags() if flags is None else flags
    if vendor != "AuthenticAMD":
        return None
    if AVX512_CORE <= flags:
        return "7"
    return "5" if {"avx2", "fma"} <= flags else None


def use_fast_mkl_kernels() -> None:
    """MKL reads the variable at its first call, so this runs before any model computes."""
    cpu_type = mkl_cpu_type()
    if cpu_type:
        os.environ.setdefault("MKL_DEBUG_CPU_TYPE", cpu_type)


def available_cpus() -> int:
    """CPUs this process may run on (cgroup and affinity aware where the OS says)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def set_threads(requested: int = 0, processes: int = 1) -> int:
    """`requested` intra-op threads (0 = this process's share of the available CPUs, when
    `processes` share the machine), with MKL's fast kernels."""
    use_fast_mkl_kernels()
    count = requested or max(1, available_cpus() // processes)
    torch.set_num_threads(count)
    return count


@dataclass
class Runtime:
    """What a job computes with, as its logs and reports state it."""

    dtype: torch.dtype
    threads: int
    cpu: str

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

    @property
    def weight_bytes(self) -> int:
        """Bytes of one weight of the summarizers (the preflight's memory estimate)."""
        return torch.finfo(self.dtype).bits // 8

    def describe(self) -> dict[str, object]:
        return {"dtype": self.dtype_name, "threads": self.threads, "cpu": self.cpu}


def setup(dtype: str = "auto", num_threads: int = 0, processes: int = 1) -> Runtime:
    """Threads and MKL first (before anything computes), then the dtype for this CPU."""
    threads = set_threads(num_threads, processes)
    return Runtime(pick_dtype(dtype), threads, cpu_model())


def versions() -> dict[str, str]:
    """Python and the installed versions of the stack, for reports and summaries."""
    found = {"python": sys.version.split()[0]}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found
