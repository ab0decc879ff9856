"""Real size-limited file systems for the tests of a full disk: a tmpfs mounted under a job's
own folders fills up as a SageMaker volume does."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest


def can_mount() -> None:
    """Mounting needs root, which CI has: there a test that cannot mount fails; elsewhere it is
    skipped with the reason."""
    if os.geteuid() != 0:
        message = "mounting a size-limited tmpfs needs root (CI runs as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def size_limited(folder: Path, size: str):
    """A tmpfs of `size` (mount's syntax: 320k, 4m) mounted at `folder` (created) while the
    block runs."""
    can_mount()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


def resize(folder: Path, size: str) -> None:
    """Give the tmpfs at `folder` a new size, keeping its files (the volume made larger)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)


def fill(folder: Path) -> Path:
    """Fill the file system at `folder` to its last byte; returns the file that did it."""
    ballast = Path(folder) / "ballast"
    with ballast.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass
    return ballast
