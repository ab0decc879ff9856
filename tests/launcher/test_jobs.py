"""detox_launcher.jobs: a job's settings are checked on the laptop, before anything is submitted:
one clear line, a non-zero exit, nothing sent."""

from __future__ import annotations

import pytest

from tests.launcher.account import BUCKET, IMAGE
from tests.servers import ROLE


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image", IMAGE], "missing --role: pass --role, set DETOX_ROLE, or put it in the config file"),
        (["--role", ROLE], "missing --image: pass --image, set DETOX_IMAGE, or put it in the config file"),
        (["--image", IMAGE, "--role", ROLE], "missing --bucket"),
        (
            ["--image", IMAGE, "--role", ROLE, "--bucket", BUCKET, "--dataset", "s3://Not_A_Bucket/x"],
            "invalid bucket name 'Not_A_Bucket' in 's3://Not_A_Bucket/x'",
        ),
        (
            ["--image", IMAGE, "--role", ROLE, "--bucket", BUCKET, "--dataset", "data/dialogsum.jsonl"],
            "--dataset must be an S3 URI for SageMaker, got 'data/dialogsum.jsonl'; upload it first",
        ),
        (
            [
                "--image",
                IMAGE,
                "--role",
                ROLE,
                "--bucket",
                BUCKET,
                "--dataset",
                f"s3://{BUCKET}/no/such/data/",
            ],
            f"dataset: nothing found at s3://{BUCKET}/no/such/data/",
        ),
        (
            ["--image", IMAGE, "--role", ROLE, "--bucket", "detox-no-such-bucket"],
            "bucket 'detox-no-such-bucket' does not exist",
        ),
        (
            ["--image", IMAGE, "--role", ROLE, "--bucket", BUCKET, "--hp", "max_ppo_step=3"],
            "unknown hyperparameter(s): 'max_ppo_step' (did you mean 'max_ppo_steps'?)",
        ),
        (
            ["--image", IMAGE, "--role", ROLE, "--bucket", BUCKET, "--hp", "batch_size=ten"],
            "'batch_size' must be int",
        ),
        (
            ["--image", IMAGE, "--role", ROLE, "--bucket", BUCKET, "--spot", "--max-wait", "10"],
            "--max-wait must be >=",
        ),
        (
            ["--image", IMAGE, "--role", ROLE, "--bucket", BUCKET, "--hp", "oops"],
            "--hp must look like NAME=VALUE",
        ),
        (
            ["--image", IMAGE, "--role", ROLE, "--bucket", BUCKET, "--tensorboard-s3-uri", "tb/"],
            "not an S3 URI (expected s3://bucket/key): 'tb/'",
        ),
        (
            ["--image", IMAGE, "--role", ROLE, "--bucket", BUCKET, "--spot", "--keep-alive", "600"],
            "--keep-alive cannot be used with --spot",
        ),
        (
            ["--image", IMAGE, "--role", ROLE, "--bucket", BUCKET, "--keep-alive", "3601"],
            "--keep-alive must be 1-3600 seconds, got 3601",
        ),
    ],
)
def test_user_errors_are_one_clear_line(aws, bucket, launch, args, message):
    code, out, err = launch("train", *args)
    assert code == 2
    assert err.startswith("detox-launch: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert aws.api.sent("CreateTrainingJob") == []


def test_a_local_run_keeps_its_event_files_in_the_work_folder(launch, tmp_path):
    code, _, err = launch(
        "local", "train", "--no-docker", "--work-dir", tmp_path, "--tensorboard-s3-uri", f"s3://{BUCKET}/tb/"
    )
    assert code == 2 and "--tensorboard-s3-uri applies to SageMaker jobs only" in err
    assert "output/tensorboard" in err and not any(tmp_path.iterdir())  # nothing written
