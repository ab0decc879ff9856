"""detox_launcher.options: settings merged like the AWS CLI merges them, and job names checked
before anything is called or written."""

from __future__ import annotations

import pytest

from tests.launcher.account import BUCKET, IMAGE
from tests.servers import ROLE


def test_settings_precedence_flags_env_config_file(aws, bucket, launch, tmp_path, monkeypatch):
    config = tmp_path / "detox.toml"
    config.write_text(
        f'image = "{IMAGE}"\nrole = "{ROLE}"\nbucket = "{bucket}"\ninstance_type = "ml.m5.xlarge"\n'
        'volume_size = 40\nprefix = "from-file"\n'
        '[hyperparameters]\nmax_ppo_steps = 7\nbatch_size = 8\n[tags]\nproject = "detox"\n'
    )
    monkeypatch.setenv("DETOX_CONFIG", str(config))
    monkeypatch.setenv("DETOX_INSTANCE_TYPE", "ml.m5.4xlarge")  # env beats the file
    monkeypatch.setenv("DETOX_VOLUME_SIZE", "60")
    code, out, err = launch("train", "--volume-size", "80", "--hp", "batch_size=4")  # flags beat env
    assert code == 0, err
    [request] = aws.api.sent("CreateTrainingJob")
    assert request["ResourceConfig"] == {
        "InstanceType": "ml.m5.4xlarge",
        "InstanceCount": 1,
        "VolumeSizeInGB": 80,
    }
    assert request["HyperParameters"] == {"max_ppo_steps": "7", "batch_size": "4"}
    assert request["OutputDataConfig"]["S3OutputPath"] == f"s3://{bucket}/from-file"
    assert request["Tags"] == [{"Key": "project", "Value": "detox"}]

    config.write_text('image = "x"\ninstance_typ = "ml.m5.xlarge"\n')
    code, out, err = launch("train")
    assert code == 2 and "unknown setting(s) 'instance_typ' (did you mean 'instance_type'?)" in err
    config.write_text(f'image = "{IMAGE}"\n')
    monkeypatch.setenv("DETOX_VOLUME_SIZE", "big")
    code, out, err = launch("train")
    assert code == 2 and "DETOX_VOLUME_SIZE: volume_size must be int, got 'big'" in err
    code, out, err = launch("train", "--config", str(tmp_path / "missing.json"))
    assert code == 2 and "config file not found" in err


@pytest.mark.parametrize("name", ["bad name!", "../../escaped", "-leading-hyphen", "x" * 64, "under_score"])
def test_job_names_are_checked_before_anything_is_called_or_written(launch, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    # A cloud submit never reaches AWS (no endpoint is configured here, so a call would fail otherwise).
    code, out, err = launch(
        "train", "--image", IMAGE, "--role", "r", "--bucket", BUCKET, f"--job-name={name}"
    )
    assert code == 2 and f"job name {name!r} is not valid" in err
    # A local run, which would use the name as a folder, writes nothing at all.
    model = tmp_path / "model"
    model.mkdir()
    code, out, err = launch(
        "local", "train", "--no-docker", "--dry-run", f"--job-name={name}", "--base-model", model
    )
    assert code == 2 and "1-63 letters, digits and hyphens" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert not (tmp_path.parent / "escaped").exists()
