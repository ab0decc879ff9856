"""S3 helpers shared by the jobs and the launcher: boto3 only, no torch.

Every failure is an `S3Error` (a `JobInputError`) whose message names the URI and says
what went wrong, so a job writes it to its failure file and the launcher prints it,
both without a traceback.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path, PurePosixPath

import boto3
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from flan_t5_detox.contract.failure import JobInputError

# Bucket naming rules (general purpose buckets): 3-63 chars, lowercase letters, digits, dots, hyphens.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class S3Error(JobInputError):
    """A bad S3 URI or an S3 request that failed for a reason the user can act on."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split `s3://bucket/key` into (bucket, key); the key may be empty or a prefix."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise S3Error(f"not an S3 URI (expected s3://bucket/key): {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise S3Error(f"invalid bucket name {bucket!r} in {uri!r}")
    return bucket, key


def join(uri: str, *parts: str) -> str:
    """`join("s3://b/p/", "x", "y")` -> "s3://b/p/x/y"."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def s3_client(client=None):
    """The given client, or one configured like the AWS CLI (env vars, profile, endpoint URLs)."""
    return client if client is not None else boto3.client("s3")


@contextlib.contextmanager
def explained(uri: str):
    """Turn botocore errors into an S3Error that says what to fix."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in ("NoSuchBucket",):
            raise S3Error(f"bucket {parse_s3_uri(uri)[0]!r} does not exist ({uri})") from None
        if code in ("NoSuchKey", "404", "NotFound"):
            raise S3Error(f"nothing found at {uri}") from None
        if code in ("AccessDenied", "403", "AllAccessDisabled"):
            raise S3Error(f"access denied to {uri}: check the credentials and their S3 permissions") from None
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
            raise S3Error(f"S3 rejected the AWS credentials ({code}) for {uri}") from None
        raise S3Error(f"S3 request for {uri} failed: {code}: {error.get('Message', exc)}") from None
    except NoCredentialsError:
        raise S3Error(f"no AWS credentials found to access {uri}") from None
    except EndpointConnectionError as exc:
        raise S3Error(f"cannot reach the S3 endpoint for {uri}: {exc}") from None
    except BotoCoreError as exc:
        raise S3Error(f"S3 request for {uri} failed: {exc}") from None


def require_bucket(bucket: str, client=None) -> None:
    """Fail early, with a clear message, when a bucket is missing or not ours."""
    uri = f"s3://{bucket}"
    with explained(uri):
        try:
            s3_client(client).head_bucket(Bucket=bucket)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchBucket", "NotFound"):
                raise S3Error(f"bucket {bucket!r} does not exist") from None
            raise


def _folder(key: str) -> str:
    return key.rstrip("/") + "/" if key.rstrip("/") else ""


def list_objects(uri: str, client=None) -> list[str]:
    """Keys at `uri`: the object itself if it exists, else everything below it as a folder."""
    bucket, key = parse_s3_uri(uri)
    client = s3_client(client)
    folder = _folder(key)
    keys = []
    with explained(uri):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            keys += [item["Key"] for item in page.get("Contents", [])]
    if key and not key.endswith("/") and key in keys:
        return [key]
    # The "/" boundary keeps s3://b/model from matching s3://b/model2/...
    return [k for k in keys if k.startswith(folder) and not k.endswith("/")]


def download_target(dest: Path, relative: str) -> Path:
    """Where the key `relative` (below the downloaded prefix) lands in `dest`; a key that would
    land outside `dest` is refused."""
    parts = PurePosixPath(relative).parts
    if not parts or any(p in ("..", "") for p in parts) or PurePosixPath(relative).is_absolute():
        raise S3Error(f"refusing to write S3 key {relative!r} outside {dest}")
    return dest.joinpath(*parts)


def download(uri: str, dest: Path | str, client=None) -> list[Path]:
    """Download an object into `dest/<name>`, or a prefix's tree into `dest/`; returns the files."""
    bucket, key = parse_s3_uri(uri)
    client = s3_client(client)
    dest = Path(dest)
    keys = list_objects(uri, client)
    if not keys:
        raise S3Error(f"nothing found at {uri}")
    single = keys == [key] and not key.endswith("/")
    files = []
    for item in keys:
        relative = PurePosixPath(item).name if single else item[len(_folder(key)) :]
        target = download_target(dest, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        with explained(f"s3://{bucket}/{item}"):
            client.download_file(bucket, item, str(target))
        files.append(target)
    return files


def upload(source: Path | str, uri: str, client=None) -> list[str]:
    """Upload a file (to `uri`, or into it when it ends with "/") or a folder's tree below `uri`."""
    bucket, key = parse_s3_uri(uri)
    client = s3_client(client)
    source = Path(source)
    if source.is_file():
        pairs = [(source, key + source.name if key.endswith("/") or not key else key)]
    elif source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file())
        pairs = [(p, _folder(key) + p.relative_to(source).as_posix()) for p in files]
    else:
        raise S3Error(f"nothing to upload at {source}")
    uploaded = []
    for path, target in pairs:
        target_uri = f"s3://{bucket}/{target}"
        with explained(target_uri):
            client.upload_file(str(path), bucket, target)
        uploaded.append(target_uri)
    return uploaded
