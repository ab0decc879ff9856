"""flan_t5_detox.s3 against a real S3 server (SeaweedFS, which checks signatures and does multipart)."""

from __future__ import annotations

import os

import boto3
import pytest

from flan_t5_detox.contract import s3
from flan_t5_detox.contract.failure import JobInputError
from tests.servers import ACCESS_KEY, REGION, SECRET_KEY, s3_test_client


@pytest.fixture
def client(s3_server):
    client = s3_test_client(s3_server.url)
    if "detox-s3-tests" not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket="detox-s3-tests")
    return client


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket-a/key/x.bin", ("bucket-a", "key/x.bin")),
        ("s3://bucket-a/prefix/", ("bucket-a", "prefix/")),
        ("s3://bucket-a", ("bucket-a", "")),
    ],
)
def test_parse_s3_uri(uri, expected):
    assert s3.parse_s3_uri(uri) == expected


@pytest.mark.parametrize(
    "uri", ["bucket/key", "https://bucket/key", "s3://", "s3://Upper/key", "s3://a/key", ""]
)
def test_bad_uris_are_clear_job_input_errors(uri):
    with pytest.raises(JobInputError, match="S3 URI|invalid bucket name"):
        s3.parse_s3_uri(uri)


def test_folder_round_trip_keeps_tree_and_bytes(client, tmp_path):
    source = tmp_path / "adapter"
    (source / "sub").mkdir(parents=True)
    (source / "adapter_config.json").write_text('{"r": 32}')
    (source / "sub" / "weights.bin").write_bytes(os.urandom(9 * 1024 * 1024))  # > 8 MB: multipart upload
    uploaded = s3.upload(source, "s3://detox-s3-tests/round/adapter/", client)
    assert sorted(uploaded) == [
        "s3://detox-s3-tests/round/adapter/adapter_config.json",
        "s3://detox-s3-tests/round/adapter/sub/weights.bin",
    ]
    # A sibling whose name extends the prefix must not be picked up.
    s3.upload(source / "adapter_config.json", "s3://detox-s3-tests/round/adapter2/", client)

    dest = tmp_path / "back"
    files = s3.download("s3://detox-s3-tests/round/adapter", dest, client)
    assert sorted(p.relative_to(dest).as_posix() for p in files) == ["adapter_config.json", "sub/weights.bin"]
    for name in ("adapter_config.json", "sub/weights.bin"):
        assert (dest / name).read_bytes() == (source / name).read_bytes()


def test_single_object_lands_inside_the_folder(client, tmp_path):
    (tmp_path / "model.tar.gz").write_bytes(b"not really gzip")
    assert s3.upload(tmp_path / "model.tar.gz", "s3://detox-s3-tests/job/output/model.tar.gz", client) == [
        "s3://detox-s3-tests/job/output/model.tar.gz"
    ]
    files = s3.download("s3://detox-s3-tests/job/output/model.tar.gz", tmp_path / "in", client)
    assert files == [tmp_path / "in" / "model.tar.gz"]
    assert files[0].read_bytes() == b"not really gzip"


def test_missing_things_are_named(client, tmp_path):
    with pytest.raises(s3.S3Error, match="nothing found at s3://detox-s3-tests/no/such/prefix"):
        s3.download("s3://detox-s3-tests/no/such/prefix", tmp_path, client)
    with pytest.raises(s3.S3Error, match="bucket 'detox-no-such-bucket' does not exist"):
        s3.download("s3://detox-no-such-bucket/x", tmp_path, client)
    with pytest.raises(s3.S3Error, match="bucket 'detox-no-such-bucket' does not exist"):
        s3.require_bucket("detox-no-such-bucket", client)
    with pytest.raises(s3.S3Error, match="nothing to upload"):
        s3.upload(tmp_path / "absent", "s3://detox-s3-tests/x/", client)
    s3.require_bucket("detox-s3-tests", client)


def test_rejected_credentials_are_explained(s3_server, tmp_path):
    wrong = boto3.client(
        "s3",
        endpoint_url=s3_server.url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key="not-the-secret",
    )
    with pytest.raises(s3.S3Error, match="rejected the AWS credentials"):
        s3.download("s3://detox-s3-tests/round/", tmp_path, wrong)


@pytest.mark.parametrize("key", ["../escape.txt", "a/../../escape.txt", "/etc/passwd", ""])
def test_keys_escaping_the_destination_are_refused(key, tmp_path):
    # Real S3 accepts such keys (SeaweedFS does not store them), so the guard is tested directly.
    with pytest.raises(s3.S3Error, match="refusing to write"):
        s3.download_target(tmp_path, key)


def test_the_job_side_uses_the_environment_like_the_aws_cli(s3_server, client, tmp_path, monkeypatch):
    """inputs.peft_checkpoint_dir downloads with a default client: credentials/endpoint from env."""
    from flan_t5_detox.contract.inputs import peft_checkpoint_dir

    client.put_object(Bucket="detox-s3-tests", Key="peft/adapter_config.json", Body=b"{}")
    for name, value in {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL_S3": s3_server.url,
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }.items():
        monkeypatch.setenv(name, value)
    folder = peft_checkpoint_dir(None, "s3://detox-s3-tests/peft/", scratch=tmp_path)
    assert (folder / "adapter_config.json").read_bytes() == b"{}"
