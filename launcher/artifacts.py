"""Fetching job artifacts from S3 into a local folder, unpacking SageMaker's tarballs safely."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from flan_t5_detox.contract import s3

from .errors import LaunchError


def unpack(archive: Path, dest: Path) -> list[Path]:
    """Extract a .tar.gz into `dest`, refusing members that would land outside it or are links."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            path = PurePosixPath(member.name)
            if path.is_absolute() or ".." in path.parts or not (member.isfile() or member.isdir()):
                raise LaunchError(f"{archive.name}: refusing unsafe member {member.name!r}")
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
            tar.extractall(dest, members, filter="data")
        else:
            tar.extractall(dest, members)
    return [dest / m.name for m in members if m.isfile()]


def fetch_uri(uri: str, dest: Path, client) -> list[Path]:
    """Download an object or prefix into `dest`; *.tar.gz files are unpacked there instead."""
    with tempfile.TemporaryDirectory(prefix="detox-fetch-") as scratch:
        files = []
        for path in s3.download(uri, scratch, client):
            relative = path.relative_to(scratch)
            if path.name.endswith(".tar.gz"):
                files += unpack(path, dest / relative.parent)
            else:
                target = dest / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(path), target)
                files.append(target)
    return files


def fetch_artifacts(artifacts: dict[str, str], dest: Path, client, out) -> dict[str, list[Path]]:
    """Each artifact (folder name -> S3 URI) into dest/<name>/; missing ones are reported."""
    fetched = {}
    for name, uri in artifacts.items():
        try:
            fetched[name] = fetch_uri(uri, dest / name, client)
        except s3.S3Error as exc:
            if "nothing found" not in str(exc):
                raise
            print(f"{name}: not found ({uri})", file=out)
            continue
        print(f"{name}: {len(fetched[name])} file(s) from {uri} -> {dest / name}", file=out)
    if not fetched:
        raise LaunchError("nothing to fetch: " + ", ".join(artifacts.values() or ["no artifacts recorded"]))
    return fetched
