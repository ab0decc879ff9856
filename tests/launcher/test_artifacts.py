"""detox_launcher.artifacts: fetching job artifacts from S3 and unpacking SageMaker's tarballs safely."""

from __future__ import annotations

from tests.launcher.account import MODEL_FILES, existing_training_job, put, tarball


def test_fetch_round_trip_of_a_real_model_tarball(aws, bucket, launch, tmp_path):
    name = existing_training_job(aws)
    code, out, err = launch("fetch", name, "--out", tmp_path / "job")
    assert code == 0, err
    for file, data in MODEL_FILES.items():
        assert (tmp_path / "job" / "model" / file).read_bytes() == data
    assert (tmp_path / "job" / "output" / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert not list((tmp_path / "job").rglob("*.tar.gz"))

    # Any S3 URI: a tarball is unpacked, a folder is copied.
    model_uri = f"s3://{bucket}/flan-t5-detox/{name}/output/model.tar.gz"
    code, out, err = launch("fetch", model_uri, "--out", tmp_path / "uri")
    assert code == 0, err
    assert (tmp_path / "uri" / "nested" / "value_head.bin").read_bytes() == MODEL_FILES[
        "nested/value_head.bin"
    ]


def test_fetch_refuses_a_tarball_that_escapes(aws, bucket, launch, tmp_path):
    uri = put(aws, "evil/model.tar.gz", tarball({"../../escaped.txt": b"x"}))
    code, out, err = launch("fetch", uri, "--out", tmp_path / "dest")
    assert code == 2 and "refusing unsafe member '../../escaped.txt'" in err
    assert not list(tmp_path.rglob("escaped.txt"))
