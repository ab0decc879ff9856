"""detox_launcher.errors: AWS failures explained in one line, never a traceback."""

from __future__ import annotations

from tests.launcher.account import IMAGE
from tests.servers import ROLE


def test_no_or_wrong_credentials(aws, bucket, launch, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    code, out, err = launch("train", "--image", IMAGE, "--role", ROLE, "--bucket", bucket)
    # A HEAD request has no error body: S3 cannot say more than 403.
    assert code == 2 and "access denied to s3://detox-launch-tests: check the credentials" in err
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    for command in (["train", "--image", IMAGE, "--role", ROLE, "--bucket", bucket], ["list"], ["wait", "x"]):
        code, out, err = launch(*command)
        assert code == 2
        assert err.startswith("detox-launch: error: no AWS credentials found: run `aws configure`")
    assert aws.api.requests == []
