"""detox_launcher.aws: region, profile and endpoint resolved like the AWS CLI resolves them."""

from __future__ import annotations


def test_region_profile_and_endpoint_like_the_aws_cli(aws, launch, tmp_path, monkeypatch):
    from detox_launcher.aws import connect
    from detox_launcher.options import resolve

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert connect(resolve({})).region == "us-east-1"  # AWS_REGION wins, as in the AWS CLI v2
    monkeypatch.delenv("AWS_REGION")
    assert connect(resolve({})).region == "eu-west-1"
    assert connect(resolve({"region": "ap-south-1"})).region == "ap-south-1"
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    code, out, err = launch("list")
    assert code == 2 and "no AWS region: pass --region, set AWS_REGION" in err

    # A named profile supplies region and credentials.
    (tmp_path / "config").write_text("[profile detox]\nregion = us-west-2\n")
    credentials = f"[detox]\naws_access_key_id = {aws.env['AWS_ACCESS_KEY_ID']}\n"
    (tmp_path / "credentials").write_text(
        credentials + f"aws_secret_access_key = {aws.env['AWS_SECRET_ACCESS_KEY']}\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_PROFILE", "detox")
    session = connect(resolve({}))
    assert session.region == "us-west-2" and session.session.get_credentials().access_key == "detox-test-key"
    code, out, err = launch("list", "--profile", "nobody")
    assert code == 2 and "The config profile (nobody) could not be found" in err

    # --endpoint-url applies to every service, like the AWS CLI's.
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    code, out, err = launch("list", "--endpoint-url", aws.api.url)
    assert code == 0, err
    assert aws.api.sent("ListTrainingJobs") and aws.api.sent("ListProcessingJobs")
