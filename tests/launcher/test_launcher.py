"""detox-launch against real local servers: the real SageMaker SDK talks to moto (behind a thin
recording/lifecycle proxy, tests/servers.py) and S3 is SeaweedFS. Assertions are on what reached
the API, what the user sees, and what lands on disk."""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
import sys
import tarfile
import time
import uuid

import pytest
from detox_launcher.cli import main

from flan_t5_detox.contract.environment import (
    ProcessingJobEnvironment,
    TrainingJobEnvironment,
    decode_hyperparameters,
)
from flan_t5_detox.contract.metrics import format_metrics_line, metric_definitions
from flan_t5_detox.contract.settings import EvalConfig, TrainConfig, parse_settings
from tests.container.test_container import image  # noqa: F401 - the built job image (or skip/fail as there)
from tests.servers import ROLE, JobState

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/flan-t5-detox:1.0"
BUCKET = "detox-launch-tests"


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


def put(aws, key: str, body: bytes = b"{}") -> str:
    aws.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    return f"s3://{BUCKET}/{key}"


def tarball(files: dict[str, bytes]) -> bytes:
    """A .tar.gz laid out like SageMaker's model.tar.gz: the folder's contents at the top."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


MODEL_FILES = {
    "adapter_config.json": b'{"r": 32, "lora_alpha": 32}',
    "adapter_model.bin": bytes(range(256)) * 64,
    "nested/value_head.bin": b"\x00\x01" * 1000,
}
REPORT_FILES = {
    "report.json": b'{"toxicity": {"before": 0.2, "after": 0.1}}',
    "report.html": b"<html></html>",
}


def leave_train_artifacts(aws, output_path: str, name: str) -> None:
    """What a finished training job leaves in S3: model.tar.gz and output.tar.gz."""
    prefix = output_path.split("/", 3)[3]
    put(aws, f"{prefix}/{name}/output/model.tar.gz", tarball(MODEL_FILES))
    put(aws, f"{prefix}/{name}/output/output.tar.gz", tarball({"metrics.jsonl": b'{"step": 1}\n'}))


def acts_like_sagemaker(aws, train_states=(), eval_states=()):
    """When the launcher creates a job, leave the artifacts a real job would (and script its states)."""

    def hook(operation: str, body: dict) -> None:
        if operation == "CreateTrainingJob":
            name = body["TrainingJobName"]
            leave_train_artifacts(aws, body["OutputDataConfig"]["S3OutputPath"], name)
            states = train_states
        else:
            name = body["ProcessingJobName"]
            report = body["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"].split("/", 3)[3]
            for file, data in REPORT_FILES.items():
                put(aws, f"{report}/{file}", data)
            states = eval_states
        if states:
            aws.api.script(name, *states)

    aws.api.on_create.append(hook)


def existing_training_job(aws, artifacts: bool = True) -> str:
    """A training job created straight in moto, as if submitted earlier (the SDK path is tested above)."""
    name = f"detox-train-{uuid.uuid4().hex[:16]}"
    output = f"s3://{BUCKET}/flan-t5-detox"
    aws.sagemaker.create_training_job(
        TrainingJobName=name,
        AlgorithmSpecification={"TrainingImage": IMAGE, "TrainingInputMode": "File"},
        RoleArn=ROLE,
        OutputDataConfig={"S3OutputPath": output},
        ResourceConfig={"InstanceType": "ml.m5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
        StoppingCondition={"MaxRuntimeInSeconds": 3600},
    )
    if artifacts:
        leave_train_artifacts(aws, output, name)
    return name


def existing_processing_job(aws) -> str:
    name = f"detox-evaluate-{uuid.uuid4().hex[:16]}"
    aws.sagemaker.create_processing_job(
        ProcessingJobName=name,
        AppSpecification={"ImageUri": IMAGE, "ContainerEntrypoint": ["evaluate"]},
        RoleArn=ROLE,
        ProcessingResources={
            "ClusterConfig": {"InstanceType": "ml.m5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30}
        },
        ProcessingOutputConfig={
            "Outputs": [
                {
                    "OutputName": "report",
                    "S3Output": {
                        "S3Uri": f"s3://{BUCKET}/flan-t5-detox/{name}/report",
                        "LocalPath": "/opt/ml/processing/output/report",
                        "S3UploadMode": "EndOfJob",
                    },
                }
            ]
        },
    )
    return name


def submitted_name(stdout: str) -> str:
    return re.search(r"submitted (\S+)", stdout).group(1)


# --- what reaches the API ------------------------------------------------------------------


def test_train_job_request(aws, bucket, launch):
    channels = {name: put(aws, f"inputs/{name}/config.json") for name in ("base_model", "peft_checkpoint")}
    channels["dataset"] = put(aws, "inputs/dataset/dialogsum.jsonl", b'{"id": "1"}\n')
    channels["reward_model"] = put(aws, "inputs/reward_model/config.json")
    code, out, err = launch(
        "train",
        "--image", IMAGE,
        "--role", ROLE,
        "--bucket", bucket,
        "--volume-size", "50",
        "--max-run", "3600",
        "--spot",
        "--max-wait", "7200",
        *[arg for name, uri in channels.items() for arg in ("--" + name.replace("_", "-"), uri)],
        "--hp", "max_ppo_steps=3",
        "--hp", "learning_rate=2e-5",
        "--hp", "adap_kl_ctrl=false",
        "--hp", "base_model_name=google/flan-t5-base",
        "--hp", "reward_label=nothate",
        "--tag", "team=ml",
        "--env", "HF_HUB_OFFLINE=1",
    )  # fmt: skip
    assert code == 0, err
    name = submitted_name(out)
    assert re.fullmatch(r"detox-train-\d{4}(-\d\d){5}-\d{3}", name)
    [request] = aws.api.sent("CreateTrainingJob")

    assert request["TrainingJobName"] == name
    assert request["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert request["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == metric_definitions()
    assert request["RoleArn"] == ROLE
    assert request["ResourceConfig"] == {
        "InstanceType": "ml.m5.2xlarge",
        "InstanceCount": 1,
        "VolumeSizeInGB": 50,
    }
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert request["EnableManagedSpotTraining"] is True
    output = f"s3://{bucket}/flan-t5-detox"
    assert request["OutputDataConfig"]["S3OutputPath"] == output
    assert request["CheckpointConfig"] == {
        "S3Uri": f"{output}/{name}/checkpoints",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert {c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in request["InputDataConfig"]} == {
        name: {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}
        for name, uri in channels.items()
    }
    assert request["Tags"] == [{"Key": "team", "Value": "ml"}]
    assert request["Environment"] == {"HF_HUB_OFFLINE": "1"}
    assert "DebugHookConfig" not in request and request.get("ProfilerConfig", {}).get("DisableProfiler", True)

    # Hyperparameters: a string map, every value JSON-encoded, which the job decodes to the values meant.
    assert request["HyperParameters"] == {
        "max_ppo_steps": "3",
        "learning_rate": "2e-05",
        "adap_kl_ctrl": "false",
        "base_model_name": '"google/flan-t5-base"',
        "reward_label": '"nothate"',
    }
    config = parse_settings(TrainConfig, decode_hyperparameters(request["HyperParameters"]))
    assert (config.max_ppo_steps, config.learning_rate, config.adap_kl_ctrl) == (3, 2e-5, False)

    # The shipped metric definitions scrape the train job's own metric line.
    line = format_metrics_line({"step": 3, "reward_mean": 0.125, "kl": -0.5, "time_step": 12.0})
    found = {
        d["Name"]: float(m.group(1)) for d in request["AlgorithmSpecification"]["MetricDefinitions"]
        if (m := re.search(d["Regex"], line))
    }  # fmt: skip
    assert found == {"train:reward_mean": 0.125, "train:kl": -0.5, "train:time_step": 12.0}


def test_evaluate_job_request_takes_the_train_jobs_model(aws, bucket, launch):
    train_name = existing_training_job(aws)
    peft = put(aws, "inputs/peft/adapter_config.json")
    code, out, err = launch(
        "evaluate", "--image", IMAGE, "--role", ROLE, "--bucket", bucket, "--train-job", train_name,
        "--peft-checkpoint", peft, "--eval", "num_samples=300", "--eval", "max-new-tokens=50",
        "--instance-type", "ml.c5.4xlarge", "--max-run", "7200",
    )  # fmt: skip
    assert code == 0, err
    name = submitted_name(out)
    assert name.startswith("detox-evaluate-")
    [request] = aws.api.sent("CreateProcessingJob")
    assert request["ProcessingJobName"] == name
    assert request["AppSpecification"] == {
        "ImageUri": IMAGE,
        "ContainerEntrypoint": ["evaluate"],
        "ContainerArguments": ["--num-samples", "300", "--max-new-tokens", "50"],
    }
    assert request["RoleArn"] == ROLE
    assert request["ProcessingResources"]["ClusterConfig"] == {
        "InstanceType": "ml.c5.4xlarge",
        "InstanceCount": 1,
        "VolumeSizeInGB": 30,
    }
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200}
    outputs = f"s3://{bucket}/flan-t5-detox"
    inputs = {i["InputName"]: i["S3Input"] for i in request["ProcessingInputs"]}
    assert {n: (i["S3Uri"], i["LocalPath"]) for n, i in inputs.items()} == {
        "peft_checkpoint": (peft, "/opt/ml/processing/input/peft_checkpoint"),
        "detoxified": (f"{outputs}/{train_name}/output/model.tar.gz", "/opt/ml/processing/input/detoxified"),
        "training_output": (
            f"{outputs}/{train_name}/output/output.tar.gz",
            "/opt/ml/processing/input/training_output",
        ),
    }
    assert all(i["S3InputMode"] == "File" and i["S3DataType"] == "S3Prefix" for i in inputs.values())
    [report] = request["ProcessingOutputConfig"]["Outputs"]
    assert report["OutputName"] == "report"
    assert report["S3Output"] == {
        "S3Uri": f"{outputs}/{name}/report",
        "LocalPath": "/opt/ml/processing/output/report",
        "S3UploadMode": "EndOfJob",
    }
    # The arguments are ones the evaluate job accepts.
    assert parse_settings(EvalConfig, {"num_samples": 300, "max_new_tokens": 50}).num_samples == 300


def test_pipeline_trains_evaluates_and_fetches_the_report(aws, bucket, launch, tmp_path):
    acts_like_sagemaker(
        aws,
        train_states=[
            JobState("InProgress", "Starting"),
            JobState("InProgress", "Training"),
            JobState("Completed"),
        ],
        eval_states=[JobState("InProgress"), JobState("Completed")],
    )
    peft = put(aws, "inputs/peft/adapter_config.json")
    code, out, err = launch(
        "pipeline", "--image", IMAGE, "--role", ROLE, "--bucket", bucket, "--peft-checkpoint", peft,
        "--hp", "max_ppo_steps=2", "--eval", "num_samples=50", "--poll", "0.01", "--no-logs",
        "--out", tmp_path,
    )  # fmt: skip
    assert code == 0, err
    train_name, eval_name = re.findall(r"submitted (\S+)", out)
    assert eval_name == train_name.replace("detox-train-", "detox-evaluate-")
    statuses = [line for line in out.splitlines() if line.startswith("detox-")]
    assert statuses == [
        f"{train_name}: InProgress (Starting)",
        f"{train_name}: InProgress (Training)",
        f"{train_name}: Completed",
        f"{eval_name}: InProgress",
        f"{eval_name}: Completed",
    ]
    [evaluation] = aws.api.sent("CreateProcessingJob")
    assert {i["InputName"] for i in evaluation["ProcessingInputs"]} == {
        "peft_checkpoint",
        "detoxified",
        "training_output",
    }
    for file, data in REPORT_FILES.items():
        assert (tmp_path / "report" / file).read_bytes() == data


# --- lifecycle as the user sees it ---------------------------------------------------------


@pytest.fixture
def train_job(aws, bucket):
    """A training job's name; moto has it Completed unless the test scripts it."""
    return existing_training_job(aws, artifacts=False)


def test_wait_shows_each_status_change_and_the_logs(aws, train_job, launch):
    aws.api.script(
        train_job,
        JobState("InProgress", "Starting"),
        JobState("InProgress", "Starting"),
        JobState("InProgress", "Downloading"),
        JobState("InProgress", "Training"),
        JobState("Completed", "Completed"),
    )
    group, stream = "/aws/sagemaker/TrainingJobs", f"{train_job}/algo-1-1700000000"
    if not aws.logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]:
        aws.logs.create_log_group(logGroupName=group)
    aws.logs.create_log_stream(logGroupName=group, logStreamName=stream)
    now = int(time.time() * 1000)
    metrics = format_metrics_line({"step": 1, "reward_mean": 0.5, "kl": 0.01})
    aws.logs.put_log_events(
        logGroupName=group,
        logStreamName=stream,
        logEvents=[
            {"timestamp": now, "message": "loading models"},
            {"timestamp": now + 1, "message": metrics},
        ],
    )
    code, out, err = launch("wait", train_job, "--poll", "0.01")
    assert code == 0, err
    assert out.splitlines() == [
        "loading models",
        metrics,
        f"{train_job}: InProgress (Starting)",
        f"{train_job}: InProgress (Downloading)",
        f"{train_job}: InProgress (Training)",
        f"{train_job}: Completed",
    ]


def test_a_failed_job_exits_non_zero_with_sagemakers_reason(aws, train_job, launch):
    reason = "AlgorithmError: Bad input: unknown hyperparameter(s): 'max_ppo_step'"
    aws.api.script(train_job, JobState("InProgress", "Training"), JobState("Failed", "Failed", reason))
    code, out, err = launch("wait", train_job, "--poll", "0.01", "--no-logs")
    assert code == 1
    assert out.splitlines()[-1] == f"{train_job}: Failed: {reason}"
    assert err.strip() == f"detox-launch: error: {train_job} failed: {reason}"


def test_stop_then_wait_shows_stopped(aws, train_job, launch):
    aws.api.script(train_job, JobState("InProgress", "Training"))
    code, out, err = launch("stop", train_job)
    assert code == 0, err
    assert aws.api.sent("StopTrainingJob") == [{"TrainingJobName": train_job}]
    assert out.strip() == f"{train_job}: Stopping"
    code, out, err = launch("wait", train_job, "--poll", "0.01", "--no-logs")
    assert code == 3
    assert out.splitlines() == [f"{train_job}: Stopped"]
    assert "was stopped" in err
    code, out, err = launch("stop", train_job)
    assert code == 2 and "already ended: Stopped" in err


def test_stop_a_processing_job(aws, bucket, launch):
    name = existing_processing_job(aws)
    aws.api.script(name, JobState("InProgress"))
    code, out, err = launch("stop", name, "--wait", "--poll", "0.01", "--no-logs")
    assert aws.api.sent("StopProcessingJob") == [{"ProcessingJobName": name}]
    assert code == 3
    assert out.splitlines() == [f"{name}: Stopping", f"{name}: Stopped"]


def test_wait_timeout_and_unknown_job(aws, train_job, launch):
    aws.api.script(train_job, JobState("InProgress", "Training"))
    code, out, err = launch("wait", train_job, "--poll", "0.01", "--timeout", "0.05", "--no-logs")
    assert code == 4
    assert f"still InProgress after 0.05 s; wait again: detox-launch wait {train_job}" in err
    code, out, err = launch("wait", "detox-no-such-job", "--no-logs")
    assert code == 2
    assert (
        err.strip()
        == "detox-launch: error: no training or processing job named 'detox-no-such-job' in us-east-1"
    )


def test_list_shows_current_states(aws, bucket, launch):
    names = [existing_training_job(aws, artifacts=False) for _ in range(3)]
    evaluation = existing_processing_job(aws)
    aws.api.script(names[0], JobState("InProgress", "Training"))
    aws.api.script(names[1], JobState("Failed", "Failed", "AlgorithmError: out of memory\nmore detail"))
    code, out, err = launch("list", "--kind", "train")
    assert code == 0, err
    rows = {line.split()[0]: line.split(None, 5)[1:] for line in out.splitlines()[1:]}  # CREATED is 2 words
    assert out.splitlines()[0].split() == ["NAME", "KIND", "STATUS", "CREATED", "REASON"]
    assert rows[names[0]][:2] == ["train", "InProgress"]
    assert rows[names[1]][:2] == ["train", "Failed"]
    assert rows[names[1]][4] == "AlgorithmError: out of memory"
    assert rows[names[2]][:2] == ["train", "Completed"]
    assert evaluation not in rows
    code, out, err = launch("list", "--status", "Completed")
    assert {names[2], evaluation} <= {line.split()[0] for line in out.splitlines()[1:]}
    assert aws.api.sent("ListTrainingJobs")[-1]["NameContains"] == "detox"


# --- artifacts ---------------------------------------------------------------------------


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


def test_upload_a_folder(aws, bucket, launch, tmp_path):
    folder = tmp_path / "peft"
    (folder / "sub").mkdir(parents=True)
    for file, data in MODEL_FILES.items():
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        (folder / file).write_bytes(data)
    uri = f"s3://{bucket}/uploads/peft/"
    code, out, err = launch("upload", folder, uri)
    assert code == 0, err
    assert out.strip() == f"uploaded 3 file(s) to {uri}"
    keys = {o["Key"] for o in aws.s3.list_objects_v2(Bucket=bucket, Prefix="uploads/peft/")["Contents"]}
    assert keys == {f"uploads/peft/{f}" for f in MODEL_FILES}
    code, out, err = launch(
        "train", "--image", IMAGE, "--role", ROLE, "--bucket", bucket, "--peft-checkpoint", uri
    )
    assert code == 0, err


# --- errors: one clear line, non-zero exit, nothing submitted -----------------------------


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
    ],
)
def test_user_errors_are_one_clear_line(aws, bucket, launch, args, message):
    code, out, err = launch("train", *args)
    assert code == 2
    assert err.startswith("detox-launch: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert aws.api.sent("CreateTrainingJob") == []


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


def test_the_console_script_exits_cleanly_without_torch(aws, tmp_path):
    """A real process: exit code, a single error line, and torch never imported."""
    probe = (
        "import sys, runpy; sys.argv = ['detox-launch', *sys.argv[1:]]\n"
        "from detox_launcher import cli, sagemaker_backend, local_backend\n"
        "import sagemaker.estimator, sagemaker.processing\n"
        "code = cli.main()\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules]\n"
        "print('heavy modules:', heavy, file=sys.stderr); sys.exit(code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, "train", "--image", IMAGE, "--bucket", BUCKET],
        capture_output=True,
        text=True,
        env=aws.env,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "detox-launch: error: missing --role: pass --role, set DETOX_ROLE, or put it in the config file",
        "heavy modules: []",
    ]


def test_help_on_every_command(capsys):
    for command in ([], ["train"], ["evaluate"], ["pipeline"], ["wait"], ["stop"], ["list"], ["fetch"],
                    ["upload"], ["local"], ["local", "train"], ["local", "evaluate"]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        assert capsys.readouterr().out.startswith("usage: detox-launch")


# --- configuration ------------------------------------------------------------------------


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


# --- local runs ---------------------------------------------------------------------------


def test_local_layout_from_local_paths_and_s3(aws, bucket, launch, tmp_path, monkeypatch):
    base = tmp_path / "base_model"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "t5"}')
    dataset = tmp_path / "dialogsum.jsonl"
    dataset.write_text('{"id": "1"}\n')
    peft = put(aws, "local/peft/adapter_config.json", b'{"r": 32}')
    root = tmp_path / "ml"
    common = [
        "--work-dir",
        root,
        "--base-model",
        base,
        "--dataset",
        dataset,
        "--peft-checkpoint",
        peft.rsplit("/", 1)[0],
    ]

    code, out, err = launch("local", "train", "--no-docker", "--dry-run", *common, "--hp", "max_ppo_steps=2")
    assert code == 0, err
    assert out.splitlines()[-1] == f"{sys.executable} -m detox_entrypoints.train --ml-root {root}"
    config = root / "input" / "config"
    assert json.loads((config / "hyperparameters.json").read_text()) == {"max_ppo_steps": "2"}
    assert json.loads((config / "inputdataconfig.json").read_text()) == {
        name: {
            "TrainingInputMode": "File",
            "S3DistributionType": "FullyReplicated",
            "RecordWrapperType": "None",
        }
        for name in ("base_model", "peft_checkpoint", "dataset")
    }
    resource = json.loads((config / "resourceconfig.json").read_text())
    assert (resource["current_host"], resource["hosts"], resource["current_instance_type"]) == (
        "algo-1", ["algo-1"], "ml.m5.2xlarge",
    )  # fmt: skip
    assert json.loads((config / "checkpointconfig.json").read_text()) == {"LocalPath": "/opt/ml/checkpoints"}

    # The job's own parser sees exactly what was meant.
    env = TrainingJobEnvironment.from_root(root, env={})
    assert env.hyperparameters == {"max_ppo_steps": 2}
    assert (env.channel("base_model") / "config.json").read_text() == '{"model_type": "t5"}'
    assert (env.channel("dataset") / "dialogsum.jsonl").read_text() == '{"id": "1"}\n'
    assert (env.channel("peft_checkpoint") / "adapter_config.json").read_bytes() == b'{"r": 32}'
    assert not (root / "input" / "data" / "peft_checkpoint").is_symlink()  # S3 input: downloaded

    # Under Docker the same inputs are bind-mounted read-only instead; `train` follows the image.
    code, out, err = launch(
        "local", "train", "--image", "flan-t5-detox:ci", "--network", "none", "--dry-run", *common
    )
    assert code == 0, err
    command = out.splitlines()[-1].split()
    assert command[:3] == ["docker", "run", "--rm"] and command[-2:] == ["flan-t5-detox:ci", "train"]
    volumes = {command[i + 1] for i, arg in enumerate(command) if arg == "-v"}
    assert volumes == {
        f"{root}:/opt/ml",
        f"{base}:/opt/ml/input/data/base_model:ro",
        f"{dataset}:/opt/ml/input/data/dataset/dialogsum.jsonl:ro",
    }
    assert "--network none" in " ".join(command)


def test_local_evaluate_layout(aws, bucket, launch, tmp_path):
    model = tmp_path / "model.tar.gz"
    model.write_bytes(tarball(MODEL_FILES))
    report_in_s3 = put(aws, "local/training/output.tar.gz", tarball({"metrics.jsonl": b"{}\n"}))
    root = tmp_path / "ml"
    code, out, err = launch(
        "local", "evaluate", "--image", "flan-t5-detox:ci", "--dry-run", "--work-dir", root,
        "--detoxified", model, "--training-output", report_in_s3, "--eval", "num_samples=5",
    )  # fmt: skip
    assert code == 0, err
    command = out.splitlines()[-1].split()
    assert command[command.index("--entrypoint") : command.index("--entrypoint") + 2] == [
        "--entrypoint",
        "evaluate",
    ]
    assert command[-3:] == ["flan-t5-detox:ci", "--num-samples", "5"]
    assert f"{model}:/opt/ml/processing/input/detoxified/model.tar.gz:ro" in command

    job = ProcessingJobEnvironment.from_root(root)
    assert job.inputs["detoxified"] == root / "processing" / "input" / "detoxified"
    assert (job.input("training_output") / "output.tar.gz").is_file()  # downloaded from S3
    assert job.output("report") == root / "processing" / "output" / "report" and job.output("report").is_dir()
    request = json.loads((root / "config" / "processingjobconfig.json").read_text())
    assert request["AppSpecification"]["ContainerEntrypoint"] == ["evaluate"]
    assert request["AppSpecification"]["ContainerArguments"] == ["--num-samples", "5"]


def test_local_train_without_docker_runs_the_job(launch, tmp_path, tiny_models, sample_dataset):
    root = tmp_path / "ml"
    code, out, err = launch(
        "local", "train", "--no-docker", "--work-dir", root,
        "--base-model", tiny_models.base_model, "--peft-checkpoint", tiny_models.peft_checkpoint,
        "--reward-model", tiny_models.reward_model, "--dataset", sample_dataset,
        "--hp", "max_ppo_steps=1", "--hp", "batch_size=4", "--hp", "mini_batch_size=4",
        "--hp", "output_min_length=8", "--hp", "output_max_length=16", "--hp", "dtype=float32",
    )  # fmt: skip
    assert code == 0, err
    assert re.search(r"detox-train-local-\S+: Completed in \d+ s", out)
    assert f"  model: {root / 'model'}" in out
    assert (root / "model" / "adapter_config.json").is_file()
    assert [
        json.loads(x)["step"] for x in (root / "output" / "data" / "metrics.jsonl").read_text().splitlines()
    ] == [1]


def test_a_plain_process_gets_a_container_environment_not_the_launchers():
    from detox_launcher.local_backend import process_environment

    launcher = {"PATH": "/bin", "HOME": "/home/me", "AWS_REGION": "eu-west-1", "HF_HUB_OFFLINE": "1"}
    launcher |= {"DETOX_EVAL_NUM_SAMPLES": "2", "DETOX_IMAGE": "x", "SECRET_TOKEN": "s"}
    env = process_environment({"DETOX_EVAL_SEED": "7"}, launcher)
    assert env == {
        "PATH": "/bin", "HOME": "/home/me", "AWS_REGION": "eu-west-1", "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "DETOX_EVAL_SEED": "7",
    }  # fmt: skip


def test_settings_left_in_the_launchers_shell_do_not_reach_a_local_job(
    launch, tmp_path, tiny_models, sample_dataset, monkeypatch
):
    """A plain-process evaluation takes its settings from its arguments and the job's Environment
    (--env), as a processing job does, and never from variables of the shell that launched it."""
    models = [
        "--base-model", tiny_models.base_model, "--peft-checkpoint", tiny_models.peft_checkpoint,
        "--reward-model", tiny_models.reward_model, "--dataset", sample_dataset,
    ]  # fmt: skip
    code, _, err = launch(
        "local", "train", "--no-docker", "--work-dir", tmp_path / "train", *models,
        "--hp", "max_ppo_steps=1", "--hp", "batch_size=4", "--hp", "mini_batch_size=4",
        "--hp", "output_min_length=8", "--hp", "output_max_length=16", "--hp", "dtype=float32",
    )  # fmt: skip
    assert code == 0, err
    for name in ("DETOX_EVAL_NUM_SAMPLES", "DETOX_NUM_SAMPLES"):
        monkeypatch.setenv(name, "2")  # left over in the user's shell
    code, _, err = launch(
        "local", "evaluate", "--no-docker", "--work-dir", tmp_path / "evaluate", *models,
        "--detoxified", tmp_path / "train" / "model", "--env", "DETOX_EVAL_MAX_NEW_TOKENS=6",
        "--eval", "bootstrap_samples=100", "--eval", "dtype=float32",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(
        (tmp_path / "evaluate" / "processing" / "output" / "report" / "report.json").read_text()
    )
    assert report["settings"]["max_new_tokens"] == 6  # the job's Environment reached it
    assert report["sample_size"] == report["test_split_size"] > 2  # the shell's variables did not


def test_local_job_failure_shows_the_failure_file(launch, tmp_path, tiny_models):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, out, err = launch(
        "local", "train", "--no-docker", "--work-dir", tmp_path / "ml",
        "--base-model", tiny_models.base_model, "--peft-checkpoint", tiny_models.peft_checkpoint,
        "--reward-model", tiny_models.reward_model, "--dataset", empty,
    )  # fmt: skip
    assert code == 1
    assert re.match(r"detox-launch: error: detox-train-local-\S+ failed after \d+ s: Bad input: ", err)
    assert "Traceback" not in err.splitlines()[0]


@pytest.mark.docker
def test_local_docker_train_then_evaluate(launch, tmp_path, tiny_models, sample_dataset, image):  # noqa: F811
    """The real image under Docker: train, then evaluate its model, both laid out by the launcher."""
    models = {
        "--base-model": tiny_models.base_model,
        "--peft-checkpoint": tiny_models.peft_checkpoint,
        "--reward-model": tiny_models.reward_model,
        "--dataset": sample_dataset,
    }
    common = ["--image", image, "--network", "none", "--env", "HF_HUB_OFFLINE=1"]
    common += [arg for pair in models.items() for arg in pair]
    train = tmp_path / "train"
    code, out, err = launch(
        "local", "train", *common, "--work-dir", train,
        "--hp", "max_ppo_steps=1", "--hp", "batch_size=4", "--hp", "mini_batch_size=4",
        "--hp", "output_min_length=8", "--hp", "output_max_length=16", "--hp", "dtype=float32",
    )  # fmt: skip
    assert code == 0, err
    assert (train / "model" / "adapter_model.bin").is_file()
    evaluate = tmp_path / "evaluate"
    code, out, err = launch(
        "local", "evaluate", *common, "--work-dir", evaluate,
        "--detoxified", train / "model", "--training-output", train / "output" / "data",
        "--eval", "num_samples=4", "--eval", "max_new_tokens=8", "--eval", "bootstrap_samples=100",
        "--eval", "generation_batch_size=4", "--eval", "dtype=float32",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((evaluate / "processing" / "output" / "report" / "report.json").read_text())
    assert report  # its contents are the evaluate job's tests' concern
    assert f"  report: {evaluate / 'processing' / 'output' / 'report'}" in out


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


def test_dry_run_prints_a_command_that_is_safe_to_paste(launch, tmp_path, tiny_models, sample_dataset):
    marker = tmp_path / "pasted"
    value = f"two words $(touch {marker})"
    code, out, err = launch(
        "local", "train", "--image", "flan-t5-detox:ci", "--dry-run", "--work-dir", tmp_path / "ml",
        "--base-model", tiny_models.base_model, "--peft-checkpoint", tiny_models.peft_checkpoint,
        "--reward-model", tiny_models.reward_model, "--dataset", sample_dataset, "--env", f"NOTE={value}",
    )  # fmt: skip
    assert code == 0, err
    line = out.splitlines()[-1]
    command = shlex.split(line)
    assert f"NOTE={value}" in command  # one argument, spaces and $(...) intact
    subprocess.run(["bash", "-c", f"set -- {line}"], check=True)  # what pasting does to the line
    assert not marker.exists()


def test_evaluate_on_two_instances_then_merges_the_hosts_parts(aws, bucket, launch, tmp_path):
    acts_like_sagemaker(aws)
    model = put(aws, "inputs/model/model.tar.gz")
    peft = put(aws, "inputs/peft/adapter_config.json")
    code, out, err = launch(
        "evaluate", "--image", IMAGE, "--role", ROLE, "--bucket", bucket, "--peft-checkpoint", peft,
        "--detoxified", model, "--instance-count", "2", "--wait", "--poll", "0.01", "--no-logs",
    )  # fmt: skip
    assert code == 0, err
    eval_name, merge_name = re.findall(r"submitted (\S+)", out)
    assert merge_name == f"{eval_name[:57]}-merge"
    sharded, merge = aws.api.sent("CreateProcessingJob")
    assert sharded["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 2
    parts_uri = sharded["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"]
    assert merge["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 1
    assert merge["AppSpecification"]["ContainerEntrypoint"] == ["evaluate"]
    assert merge["AppSpecification"]["ContainerArguments"] == ["merge"]
    assert [(i["InputName"], i["S3Input"]["S3Uri"]) for i in merge["ProcessingInputs"]] == [
        ("parts", parts_uri)
    ]
    assert merge["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"].endswith(
        f"/{merge_name}/report"
    )

    code, out, err = launch(
        "evaluate", "--image", IMAGE, "--role", ROLE, "--bucket", bucket, "--detoxified", model,
        "--instance-count", "2",
    )  # fmt: skip
    assert code == 2 and "needs --wait: its merge job runs after it" in err
    code, out, err = launch(
        "train", "--image", IMAGE, "--role", ROLE, "--bucket", bucket, "--instance-count", "2"
    )
    assert code == 0, err  # data-parallel training: the hosts meet at algo-1 (contract/cluster.py)
    [request] = aws.api.sent("CreateTrainingJob")
    assert request["ResourceConfig"]["InstanceCount"] == 2
    assert len(aws.api.sent("CreateProcessingJob")) == 2


def test_local_evaluation_on_two_hosts_merges_to_the_one_host_report(
    launch, tmp_path, tiny_models, sample_dataset, train_layout
):
    """The no-Docker path with a two-host resource config: each host a process, then the merge."""
    from detox_entrypoints import train

    trained = train_layout("train", max_ppo_steps=1)
    assert train.main(["--ml-root", str(trained)]) == 0
    common = [
        "--base-model", tiny_models.base_model, "--peft-checkpoint", tiny_models.peft_checkpoint,
        "--reward-model", tiny_models.reward_model, "--dataset", sample_dataset,
        "--detoxified", trained / "model", "--eval", "num_samples=9", "--eval", "max_new_tokens=12",
        "--eval", "bootstrap_samples=200", "--eval", "num_threads=1", "--eval", "generation_batch_size=4",
    ]  # fmt: skip
    code, out, err = launch("local", "evaluate", "--no-docker", "--work-dir", tmp_path / "one", *common)
    assert code == 0, err
    code, out, err = launch(
        "local", "evaluate", "--no-docker", "--work-dir", tmp_path / "two", "--instance-count", "2", *common
    )
    assert code == 0, err
    for host in ("algo-1", "algo-2"):
        config = json.loads((tmp_path / "two" / host / "config" / "resourceconfig.json").read_text())
        assert config == {"current_host": host, "hosts": ["algo-1", "algo-2"]}
    assert sorted(p.name for p in (tmp_path / "two" / "parts").iterdir()) == [
        "part-algo-1.json",
        "part-algo-2.json",
    ]
    one = tmp_path / "one" / "processing" / "output" / "report"
    two = tmp_path / "two" / "merge" / "processing" / "output" / "report"
    assert (two / "comparisons.csv").read_text() == (one / "comparisons.csv").read_text()
    a, b = (json.loads((folder / "report.json").read_text()) for folder in (one, two))
    assert a["metrics"] == b["metrics"] and a["sample_size"] == b["sample_size"] == 9


def test_local_training_on_two_hosts_runs_them_together_and_keeps_rank_0s_model(
    launch, tmp_path, tiny_models, sample_dataset
):
    """The no-Docker path with a two-host resource config: both hosts at once, over loopback."""
    common = [
        "--base-model", tiny_models.base_model, "--peft-checkpoint", tiny_models.peft_checkpoint,
        "--reward-model", tiny_models.reward_model, "--dataset", sample_dataset,
        "--hp", "max_ppo_steps=2", "--hp", "batch_size=8", "--hp", "mini_batch_size=4",
        "--hp", "output_min_length=8", "--hp", "output_max_length=16", "--hp", "num_threads=1",
        "--hp", "dtype=float32",
    ]  # fmt: skip
    code, out, err = launch("local", "train", "--work-dir", tmp_path / "d", "--instance-count", "2", *common)
    assert code == 2 and "add --no-docker" in err
    root = tmp_path / "two"
    code, out, err = launch(
        "local", "train", "--no-docker", "--work-dir", root, "--instance-count", "2", *common
    )
    assert code == 0, err
    assert "2 hosts" in out and str(root / "algo-1" / "model") in out
    for host in ("algo-1", "algo-2"):
        config = json.loads((root / host / "input" / "config" / "resourceconfig.json").read_text())
        assert config["current_host"] == host and config["hosts"] == ["algo-1", "algo-2"]
    summary = json.loads((root / "algo-1" / "output" / "data" / "training_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    assert (root / "algo-1" / "model" / "adapter_config.json").is_file()
    assert not any((root / "algo-2" / "model").iterdir())
