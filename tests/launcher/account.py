"""What the tests' AWS account holds, made straight in the local servers (tests/servers.py): S3
objects, SageMaker-style tarballs, jobs created as if submitted earlier, and a hook that leaves
what a real job would when the launcher creates one."""

from __future__ import annotations

import io
import re
import tarfile
import uuid

from tests.servers import ROLE

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/flan-t5-detox:1.0"


BUCKET = "detox-launch-tests"


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


def service_model_errors(operation: str, request: dict) -> str:
    """What botocore's validation finds wrong with `request` for a SageMaker `operation`, from
    the service model ("" when nothing)."""
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model("sagemaker")
    report = ParamValidator().validate(request, model.operation_model(operation).input_shape)
    return report.generate_report() if report.has_errors() else ""


def submitted_name(stdout: str) -> str:
    return re.search(r"submitted (\S+)", stdout).group(1)
