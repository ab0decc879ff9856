"""detox_launcher.sagemaker_backend: what reaches the SageMaker API (CreateTrainingJob,
CreateProcessingJob) and a job's lifecycle as the user sees it (wait, logs, stop, list), with the
real SageMaker SDK against moto (tests/servers.py) and S3 on SeaweedFS."""

from __future__ import annotations

import re
import time

from flan_t5_detox.contract.environment import decode_hyperparameters
from flan_t5_detox.contract.metrics import format_metrics_line, metric_definitions
from flan_t5_detox.contract.paths import CONTAINER, MlPaths
from flan_t5_detox.contract.settings import EvalConfig, TrainConfig, parse_settings
from tests.launcher.account import (
    IMAGE,
    existing_processing_job,
    existing_training_job,
    put,
    service_model_errors,
    submitted_name,
)
from tests.servers import ROLE, JobState


def submit_train_job(aws, bucket, launch) -> tuple[str, dict[str, str], dict]:
    """A train job submitted with every kind of flag: its name, its channels, and the
    CreateTrainingJob request that reached the API."""
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
    [request] = aws.api.sent("CreateTrainingJob")
    return submitted_name(out), channels, request


def test_train_job_request(aws, bucket, launch):
    name, channels, request = submit_train_job(aws, bucket, launch)
    assert re.fullmatch(r"detox-train-\d{4}(-\d\d){5}-\d{3}", name)

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


def test_train_job_hyperparameters_and_metric_definitions(aws, bucket, launch):
    _, _, request = submit_train_job(aws, bucket, launch)
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


def test_keep_alive_asks_for_a_warm_pool(aws, bucket, launch):
    code, out, err = launch(
        "train", "--image", IMAGE, "--role", ROLE, "--bucket", bucket, "--keep-alive", "1800"
    )  # fmt: skip
    assert code == 0, err
    [request] = aws.api.sent("CreateTrainingJob")
    assert request["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 1800
    assert service_model_errors("CreateTrainingJob", request) == ""
    stored = aws.sagemaker.describe_training_job(TrainingJobName=submitted_name(out))
    assert stored["TrainingJobName"] == submitted_name(out)  # moto took the request
    # Without the flag, no warm pool.
    launch("train", "--image", IMAGE, "--role", ROLE, "--bucket", bucket)
    assert "KeepAlivePeriodInSeconds" not in aws.api.sent("CreateTrainingJob")[1]["ResourceConfig"]


def test_train_job_request_with_tensorboard_output(aws, bucket, launch):
    """SageMaker syncs the job's TensorBoard folder to S3 while it runs; the request that reached
    the API is one SageMaker's service model (botocore's) accepts."""
    peft = put(aws, "inputs/peft_checkpoint/config.json")
    code, _, err = launch(
        "train", "--image", IMAGE, "--role", ROLE, "--bucket", bucket, "--peft-checkpoint", peft,
        "--tensorboard-s3-uri", f"s3://{bucket}/tensorboard/run-1",
    )  # fmt: skip
    assert code == 0, err
    [request] = aws.api.sent("CreateTrainingJob")
    assert request["TensorBoardOutputConfig"] == {
        "S3OutputPath": f"s3://{bucket}/tensorboard/run-1",
        "LocalPath": "/opt/ml/output/tensorboard",
    }
    assert CONTAINER.tensorboard == MlPaths(CONTAINER.root).root / "output" / "tensorboard"
    assert service_model_errors("CreateTrainingJob", request) == ""


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
