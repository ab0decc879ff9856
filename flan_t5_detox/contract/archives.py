"""Inputs that arrive either as a folder or as the tarball SageMaker made of it.

A training job's `/opt/ml/model` becomes `model.tar.gz` and `/opt/ml/output/data`
becomes `output.tar.gz`; a processing input pointing at either S3 object gets
that one file. `resolve_folder` hands back a folder in both cases. No torch here.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

from flan_t5_detox.contract.failure import JobInputError


def _safe_members(archive: tarfile.TarFile, dest: Path) -> list[tarfile.TarInfo]:
    """Plain files and folders that land inside `dest`; anything else is refused."""
    members = []
    root = dest.resolve()
    for member in archive.getmembers():
        target = (dest / member.name).resolve()
        if target != root and root not in target.parents:
            raise JobInputError(f"archive entry {member.name!r} points outside the archive")
        if member.isfile() or member.isdir():
            members.append(member)
    return members


def unpack(archive_path: Path, scratch: Path | None = None) -> Path:
    """Extract a .tar.gz/.tar into a fresh temporary folder and return it."""
    dest = Path(tempfile.mkdtemp(prefix="unpacked-", dir=scratch))
    try:
        with tarfile.open(archive_path) as archive:
            members = _safe_members(archive, dest)
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
                archive.extractall(dest, members=members, filter="data")
            else:
                archive.extractall(dest, members=members)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise JobInputError(f"cannot unpack {archive_path}: {exc}") from exc
    return dest


def _archives_in(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith((".tar.gz", ".tgz", ".tar")))


def resolve_folder(path: Path, marker: str, what: str, scratch: Path | None = None) -> Path:
    """The folder holding `marker`: `path` itself, or what its single tarball unpacks to.

    `marker` is a file name that identifies the content (e.g. adapter_config.json).
    """
    path = Path(path)
    if path.is_dir() and (path / marker).is_file():
        return path
    archives = _archives_in(path)
    if len(archives) != 1:
        found = "no" if not archives else f"{len(archives)}"
        raise JobInputError(
            f"{what}: {path} has no {marker} and {found} tarball(s); give the folder or exactly one "
            "model.tar.gz / output.tar.gz as SageMaker writes it"
        )
    unpacked = unpack(archives[0], scratch)
    candidates = [unpacked] + sorted(p.parent for p in unpacked.rglob(marker))
    for folder in candidates:
        if (folder / marker).is_file():
            return folder
    raise JobInputError(f"{what}: {archives[0].name} holds no {marker}")
