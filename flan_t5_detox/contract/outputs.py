"""Publishing a job's results: a folder appears whole or not at all."""

from __future__ import annotations

import shutil
from pathlib import Path


def publish(staging: Path, target: Path) -> None:
    """Move every entry of `staging` into `target` (replacing same-named ones), then drop `staging`.

    Everything is written to `staging` first, beside `target` on the same file system, so each
    move is a rename and `target` never holds half of a result."""
    target.mkdir(parents=True, exist_ok=True)
    for item in staging.iterdir():
        destination = target / item.name
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        elif destination.exists() or destination.is_symlink():
            destination.unlink()
        shutil.move(str(item), destination)
    staging.rmdir()
