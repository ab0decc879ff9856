"""The switches `./run test` uses to stand in for other CPU kinds really switch the kernels."""

import os
import subprocess
import sys

import pytest

from tests import cpu_kinds

MKL_NAMES = {"default": "SSE4.2", "avx2": "AVX2", "avx512": "AVX-512"}  # as MKL_VERBOSE names them


@pytest.mark.parametrize("kind", cpu_kinds.emulable(), ids=lambda kind: kind.name)
def test_each_kind_this_machine_can_emulate_switches_aten_and_mkl(kind):
    env = {**os.environ, **kind.env, "MKL_VERBOSE": "1"}
    assert cpu_kinds.aten_capability(env) == kind.name
    matmul = "import torch; a = torch.randn(64, 64); a @ a"
    shown = subprocess.run(
        [sys.executable, "-c", matmul], env=env, capture_output=True, text=True, check=True
    )
    assert f"(Intel(R) {MKL_NAMES[kind.name]}) enabled processors" in shown.stdout


def test_the_machine_can_always_emulate_the_generic_kernels():
    assert [kind.name for kind in cpu_kinds.emulable()][0] == "default"
