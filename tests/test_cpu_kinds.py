"""The switches `./run test` uses to stand in for other CPU kinds really switch the kernels."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import cpu_kinds

# The instruction sets MKL_VERBOSE names, by rank: what each kind allows at most.
MKL_RANK = {"SSE4.2": 0, "AVX": 1, "AVX2": 1, "AVX-512": 2}
KIND_RANK = {"default": 0, "avx2": 1, "avx512": 2}


def mkl_instructions(env: dict[str, str]) -> str | None:
    """The instruction set MKL says it runs a float32 GEMM with, in a fresh process; None when it
    names none ("Intel(R) Architecture processors": its generic path, as on other vendors' CPUs)."""
    matmul = "import torch; a = torch.randn(64, 64); a @ a"
    shown = subprocess.run(
        [sys.executable, "-c", matmul], env={**env, "MKL_VERBOSE": "1"}, capture_output=True
    ).stdout.decode()
    assert "MKL_VERBOSE Intel(R) MKL" in shown and "SGEMM" in shown, shown[-2000:]
    named = re.search(r"\(Intel\(R\) ([\w.-]+)\) enabled processors", shown)
    return named.group(1) if named else None


@pytest.mark.parametrize("kind", cpu_kinds.emulable(), ids=lambda kind: kind.name)
def test_each_kind_this_machine_can_emulate_switches_aten_and_caps_mkl(kind):
    env = {**os.environ, **kind.env}
    assert cpu_kinds.aten_capability(env) == kind.name
    name = mkl_instructions(env)
    # MKL takes the cap on Intel CPUs; elsewhere it may choose a lower path by itself, down to its
    # generic one, which names no instruction set.
    intel = "GenuineIntel" in Path("/proc/cpuinfo").read_text()
    if name is None:
        assert not intel, "MKL named no instruction set on an Intel CPU"
        used = 0
    else:
        used = MKL_RANK.get(name, 0 if name.startswith(("SSE", "SSSE")) else len(MKL_RANK))
    assert used == KIND_RANK[kind.name] if intel else used <= KIND_RANK[kind.name]


def test_the_machine_can_always_emulate_the_generic_kernels():
    assert [kind.name for kind in cpu_kinds.emulable()][0] == "default"
