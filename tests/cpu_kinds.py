"""The CPU kinds this machine can stand in for, as environment switches of torch's own kernel
dispatch (ATen), MKL (float32 GEMM) and oneDNN (bfloat16 and other mkldnn kernels).

A machine can run the kernels of a lower instruction set, never a higher one. Tests marked
`numerics` give a verdict that float kernels could move; `./run test` runs them natively and
again under every kind listed here (`python -m tests.cpu_kinds` prints them, one per line, as
`name VAR=value ...`).

- `default`: no vector extensions past SSE4 (the generic kernels);
- `avx2`: AVX2 and FMA, no AVX-512 (e.g. AMD EPYC Rome and Milan);
- `avx512`: AVX-512 without bf16 (e.g. Skylake and Cascade Lake, the ml.m5 family).
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ORDER = ("default", "avx2", "avx512")
NEEDS = {"default": set(), "avx2": {"avx2", "fma"}, "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq"}}
SHOWN = {"NO AVX": "default", "AVX2": "avx2", "AVX512": "avx512"}  # torch's words for each kind


@dataclass(frozen=True)
class CpuKind:
    name: str
    env: dict[str, str]


def _kind(name: str, mkl: str, **more: str) -> CpuKind:
    return CpuKind(name, {"ATEN_CPU_CAPABILITY": name, "MKL_ENABLE_INSTRUCTIONS": mkl, **more})


# oneDNN is capped only for `avx512`, as bf16 without native support (ml.m5): torch routes bf16
# matmuls to oneDNN by what the hardware has, so capping oneDNN below AVX-512 makes a machine
# no real one is (oneDNN then refuses the primitive). A real AVX2 machine's bf16 matmul path is
# chosen by hardware and cannot be put on here.
KINDS = (
    _kind("default", "SSE4_2"),
    _kind("avx2", "AVX2"),
    _kind("avx512", "AVX512", ONEDNN_MAX_CPU_ISA="AVX512_CORE"),
)


def aten_capability(env: dict[str, str] | None = None) -> str:
    """The kind whose kernels torch's ATen dispatch uses in a fresh process with `env`."""
    code = "import torch; print(torch.__config__.show())"
    shown = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return SHOWN[re.search(r"CPU capability usage: (.+)", shown.stdout).group(1).strip()]


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def emulable() -> list[CpuKind]:
    """The kinds whose instructions this machine's CPU has. (torch 1.13 itself picks AVX2 on
    some AVX-512 machines; the hardware, not that choice, bounds what can run here.)"""
    return [kind for kind in KINDS if NEEDS[kind.name] <= cpu_flags()]


if __name__ == "__main__":
    for kind in emulable():
        print(kind.name, *(f"{k}={v}" for k, v in kind.env.items()))
