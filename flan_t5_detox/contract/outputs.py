"""Publishing a job's results: a folder appears whole or not at all; where they go is checked
before any work."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from flan_t5_detox.contract.disk import FULL
from flan_t5_detox.contract.failure import JobInputError


def check_writable(folder: Path, what: str) -> None:
    """Fail now, before any model loads, if `folder` cannot take the job's results, nor its parent
    a staging folder (results are staged inside the folder or beside it, see `publish`)."""
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


def publish(staging: Path, target: Path, last: str | None = None, stale: Iterable[str] = ()) -> None:
    """Move every entry of `staging` into `target` (replacing same-named ones), then drop `staging`.

    `staging` must be on the file system of `target`, beside it or inside it, so each move is a
    rename: a file replaces its namesake in one step, and `target` never holds half of a file.
    Entries named in `stale` that this result does not bring are removed from `target` first, so
    an earlier result's files do not mix with this one's; the entry named `last` is moved last, so
    its presence says that every other entry has arrived. If a move fails, the staging folder is
    removed and the failure is reported as a `JobInputError` naming `target` (a full disk's
    OSError is raised as it is, for the caller's `disk.writing`)."""
    try:
        target.mkdir(parents=True, exist_ok=True)
        items = sorted(staging.iterdir(), key=lambda item: (item.name == last, item.name))
        brought = {item.name for item in items}
        for name in stale:
            if name not in brought:
                _remove(target / name)
        for item in items:
            destination = target / item.name
            if destination.is_dir() or item.is_dir():
                _remove(destination)  # a rename replaces a file (or a link) by a file, nothing else
            shutil.move(str(item), destination)
        staging.rmdir()
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if exc.errno in FULL:
            raise  # the caller's `disk.writing` names what was written and the free space
        raise JobInputError(f"cannot write the results to {target}: {exc.strerror or exc}") from exc


def _remove(path: Path) -> None:
    """`path` gone, whatever it is (a link is removed, never what it points to)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
