"""Publishing a job's results: a folder appears whole or not at all; where they go is checked
before any work."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from flan_t5_detox.contract.failure import JobInputError


def check_writable(folder: Path, what: str) -> None:
    """Fail now, before any model loads, if `folder` cannot take the job's results, or its parent
    a staging folder: results are staged in the folder or beside it (see `publish`)."""
    for place in (folder.parent, folder):
        try:
            place.mkdir(parents=True, exist_ok=True)
            handle, probe = tempfile.mkstemp(prefix=".write-check-", dir=place)
            os.close(handle)
            os.unlink(probe)
        except OSError as exc:
            raise JobInputError(
                f"{what} {folder} cannot be written ({exc.strerror or type(exc).__name__} at {place}); "
                "make it a writable folder"
            ) from exc


def publish(staging: Path, target: Path) -> None:
    """Move every entry of `staging` into `target` (replacing same-named ones), then drop `staging`.

    Everything is written to `staging` first, on the same file system as `target` (beside it, or
    inside it where only that folder is mounted), so each move is a rename and `target` never
    holds half of a result. If a move fails, the staging
    folder is removed and the failure is reported as a `JobInputError` naming `target`."""
    try:
        target.mkdir(parents=True, exist_ok=True)
        for item in staging.iterdir():
            destination = target / item.name
            if destination.is_dir() and not destination.is_symlink():
                shutil.rmtree(destination)
            elif destination.exists() or destination.is_symlink():
                destination.unlink()
            shutil.move(str(item), destination)
        staging.rmdir()
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise JobInputError(f"cannot write the results to {target}: {exc.strerror or exc}") from exc
