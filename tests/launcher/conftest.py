"""The launcher tests' fixtures. They run detox-launch against real local servers: the real
SageMaker SDK talks to moto (behind a thin recording/lifecycle proxy, tests/servers.py) and S3 is
SeaweedFS. Assertions are on what reached the API, what the user sees, and what lands on disk."""

from __future__ import annotations

import pytest
from detox_launcher.cli import main

from tests.container.engine import image  # noqa: F401 - a fixture: the built job image (local Docker runs)
from tests.launcher.account import BUCKET, existing_training_job


@pytest.fixture
def bucket(aws):
    if BUCKET not in [b["Name"] for b in aws.s3.list_buckets()["Buckets"]]:
        aws.s3.create_bucket(Bucket=BUCKET)
    return BUCKET


@pytest.fixture
def launch(capsys):
    """Run detox-launch in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def train_job(aws, bucket):
    """A training job's name; moto has it Completed unless the test scripts it."""
    return existing_training_job(aws, artifacts=False)
