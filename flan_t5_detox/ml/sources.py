"""Where each model of an evaluation came from, with fingerprints of its files, for the report:
two reports of the same numbers name the same bytes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from flan_t5_detox.contract.paths import ADAPTER_INFO


@dataclass
class Source:
    """Where a model or adapter came from, and fingerprints of its files."""

    location: str
    sha256: dict[str, str] = field(default_factory=dict)
    info: dict | None = None  # adapter_info.json of a trained adapter


def describe_source(location: str | Path, origin: str | Path | None = None) -> Source:
    """Fingerprint `location`; `origin` names where it came from when that differs (an unpacked tarball)."""
    path = Path(location)
    if not path.is_dir():  # a hub name
        return Source(location=str(location))
    digests = {}
    for item in sorted(path.iterdir()):
        if item.is_file() and item.suffix in (".bin", ".safetensors", ".json", ".model"):
            digest = hashlib.sha256()
            with item.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            digests[item.name] = digest.hexdigest()
    info_path = path / ADAPTER_INFO
    info = json.loads(info_path.read_text()) if info_path.is_file() else None
    return Source(location=str(origin or path), sha256=digests, info=info)
