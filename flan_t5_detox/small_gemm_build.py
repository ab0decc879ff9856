"""Compiling small_gemm.c: standard library only, so the image's build stage can run it as a script
(`python3 small_gemm_build.py DIR`) without torch or the package installed."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("small_gemm.c")
COMPILE_FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-fPIC", "-Wall"]


def library_name() -> str:
    """The built library's file name, which changes with its source and flags."""
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(COMPILE_FLAGS).encode()).hexdigest()[:12]
    return f"small_gemm-{digest}.so"


def build(directory: Path, compiler: str | None = None) -> Path:
    """Compile the kernel into `directory` (atomically: a concurrent build never sees half a file).

    OpenMP is compiled in but not linked: its symbols bind at load time to torch's runtime."""
    compiler = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise RuntimeError("no C compiler (cc or gcc) on PATH")
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / library_name()
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        obj, lib = Path(tmp) / "small_gemm.o", Path(tmp) / target.name
        for command in (
            [compiler, *COMPILE_FLAGS, "-c", str(SOURCE), "-o", str(obj)],
            [compiler, "-shared", str(obj), "-o", str(lib)],
        ):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr.strip()}")
        os.replace(lib, target)
    return target


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
