"""Resolving job inputs: a channel folder when given, else a hub name or an S3 URI."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .contract import JobInputError


def model_source(channel: Path | None, hub_name: str, what: str) -> str:
    """A channel folder wins; otherwise the hub name (downloaded by from_pretrained)."""
    if channel is not None:
        return str(channel)
    if not hub_name:
        raise JobInputError(f"no {what}: provide the channel or its hub name")
    return hub_name


def peft_checkpoint_dir(channel: Path | None, s3_uri: str, scratch: Path | None = None) -> Path:
    """The summarization adapter folder: the channel, or downloaded from `s3_uri`."""
    if channel is not None:
        return channel
    if not s3_uri:
        raise JobInputError(
            "no PEFT summarization checkpoint: give a 'peft_checkpoint' channel or the "
            "'peft_checkpoint_s3_uri' hyperparameter"
        )
    from .s3 import download_prefix  # boto3 only when needed

    dest = Path(tempfile.mkdtemp(prefix="peft-checkpoint-", dir=scratch))
    download_prefix(s3_uri, dest)
    return dest
