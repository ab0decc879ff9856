"""SageMaker backend: submit with the SageMaker Python SDK (Estimator, Processor); describe,
wait, stop and list with the SageMaker API; follow logs in CloudWatch Logs."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime

from flan_t5_detox.contract import s3
from flan_t5_detox.contract.paths import CONTAINER, REPORT_OUTPUT

from .aws import Aws
from .errors import EXIT_TIMEOUT, LaunchError
from .jobs import EvalJob, TrainJob

TERMINAL = ("Completed", "Failed", "Stopped")
# Before any sagemaker import: the SDK keeps a level once set; its INFO chatter would drown ours.
for _name in ("sagemaker", "sagemaker.config"):
    logging.getLogger(_name).setLevel(logging.WARNING)
LOG_GROUPS = {"train": "/aws/sagemaker/TrainingJobs", "evaluate": "/aws/sagemaker/ProcessingJobs"}


def sdk_config() -> dict:
    """The user's SageMaker SDK config, with SDK telemetry off unless it turns it on."""
    from sagemaker.config import load_sagemaker_config

    config = load_sagemaker_config() or {}
    config.setdefault("SchemaVersion", "1.0")
    modules = config.setdefault("SageMaker", {}).setdefault("PythonSDK", {}).setdefault("Modules", {})
    modules.setdefault("TelemetryOptOut", True)
    return config


def sdk_session(aws: Aws, bucket: str | None = None, pipeline: bool = False):
    """A sagemaker.Session (a PipelineSession with `pipeline`: jobs become pipeline steps) on our
    boto3 session, with SDK telemetry off unless the user's SageMaker config turns it on."""
    import sagemaker
    from sagemaker.workflow.pipeline_context import PipelineSession

    session = (PipelineSession if pipeline else sagemaker.Session)(
        boto_session=aws.session,
        sagemaker_client=aws.client("sagemaker"),
        default_bucket=bucket,
        sagemaker_config=sdk_config(),
    )
    # The SDK builds its S3 clients from the boto3 session alone; keep --endpoint-url for them too.
    session.s3_client, session.s3_resource = aws.client("s3"), aws.resource("s3")
    return session


def check_inputs(aws: Aws, output_uri: str, inputs: dict[str, str]) -> None:
    """Fail before submitting when the output bucket or an input is missing."""
    client = aws.client("s3")
    s3.require_bucket(s3.parse_s3_uri(output_uri)[0], client)
    for name, uri in inputs.items():
        if not s3.list_objects(uri, client):
            raise LaunchError(f"{name}: nothing found at {uri}")


def estimator(job: TrainJob, session, **override):
    """The SDK's Estimator for `job`; `override` replaces arguments (a pipeline's parameters)."""
    from sagemaker.debugger import TensorBoardOutputConfig
    from sagemaker.estimator import Estimator

    tensorboard = None
    if job.tensorboard_s3_uri:  # SageMaker syncs the job's TensorBoard folder there while it runs
        tensorboard = TensorBoardOutputConfig(job.tensorboard_s3_uri, str(CONTAINER.tensorboard))
    arguments = dict(
        image_uri=job.image,
        role=job.role,
        instance_count=job.resources.instance_count,
        instance_type=job.resources.instance_type,
        volume_size=job.resources.volume_size,
        max_run=job.resources.max_run,
        output_path=job.output_path,
        checkpoint_s3_uri=job.checkpoint_s3_uri or None,
        checkpoint_local_path=str(CONTAINER.checkpoints) if job.checkpoint_s3_uri else None,
        use_spot_instances=job.spot,
        max_wait=job.max_wait,
        keep_alive_period_in_seconds=job.keep_alive,
        hyperparameters=job.hyperparameters,
        metric_definitions=job.metric_definitions,
        tensorboard_output_config=tensorboard,
        tags=[{"Key": k, "Value": v} for k, v in job.tags.items()] or None,
        environment=job.environment or None,
        base_job_name="detox-train",
        sagemaker_session=session,
        # The image ships no smdebug; profiler and debugger rules would only add jobs and outputs.
        disable_profiler=True,
        debugger_hook_config=False,
    )
    return Estimator(**{**arguments, **override})


def submit_training(aws: Aws, job: TrainJob) -> str:
    from sagemaker.inputs import TrainingInput

    check_inputs(aws, job.output_path, job.channels)
    session = sdk_session(aws, s3.parse_s3_uri(job.output_path)[0])
    channels = {name: TrainingInput(uri) for name, uri in job.channels.items()}
    estimator(job, session).fit(inputs=channels or None, job_name=job.name, wait=False, logs=False)
    return job.name


def processor(job: EvalJob, session, **override):
    """The SDK's Processor for `job`; `override` replaces arguments (a pipeline's parameters)."""
    from sagemaker.processing import Processor

    arguments = dict(
        role=job.role,
        image_uri=job.image,
        instance_count=job.resources.instance_count,
        instance_type=job.resources.instance_type,
        entrypoint=job.entrypoint,
        volume_size_in_gb=job.resources.volume_size,
        max_runtime_in_seconds=job.resources.max_run,
        base_job_name="detox-evaluate",
        env=job.environment or None,
        tags=[{"Key": k, "Value": v} for k, v in job.tags.items()] or None,
        sagemaker_session=session,
    )
    return Processor(**{**arguments, **override})


def processing_io(inputs: dict, report_uri) -> tuple[list, list]:
    """The evaluate job's ProcessingInputs (each at /opt/ml/processing/input/<name>) and its one
    output, the report folder, uploaded to `report_uri`."""
    from sagemaker.processing import ProcessingInput, ProcessingOutput

    return [
        ProcessingInput(source=uri, destination=str(CONTAINER.processing_input(name)), input_name=name)
        for name, uri in inputs.items()
    ], [
        ProcessingOutput(
            source=str(CONTAINER.processing_output(REPORT_OUTPUT)),
            destination=report_uri,
            output_name=REPORT_OUTPUT,
        )
    ]


def submit_processing(aws: Aws, job: EvalJob) -> str:
    check_inputs(aws, job.report_uri, job.inputs)
    session = sdk_session(aws, s3.parse_s3_uri(job.report_uri)[0])
    inputs, outputs = processing_io(job.inputs, job.report_uri)
    processor(job, session).run(
        inputs=inputs,
        outputs=outputs,
        arguments=job.arguments or None,
        wait=False,
        logs=False,
        job_name=job.name,
    )
    return job.name


@dataclass
class JobStatus:
    name: str
    kind: str  # "train" | "evaluate"
    status: str
    secondary: str = ""
    reason: str = ""
    created: datetime | None = None
    artifacts: dict[str, str] = field(default_factory=dict)  # what `fetch` downloads, by folder name

    def line(self) -> str:
        detail = f" ({self.secondary})" if self.secondary and self.secondary != self.status else ""
        reason = f": {self.reason}" if self.reason else ""
        return f"{self.name}: {self.status}{detail}{reason}"


def _training_status(data: dict) -> JobStatus:
    model = (data.get("ModelArtifacts") or {}).get("S3ModelArtifacts", "")
    artifacts = {"model": model, "output": model.rsplit("/", 1)[0] + "/output.tar.gz"} if model else {}
    return JobStatus(
        name=data["TrainingJobName"],
        kind="train",
        status=data["TrainingJobStatus"],
        secondary=data.get("SecondaryStatus", ""),
        reason=data.get("FailureReason", ""),
        created=data.get("CreationTime"),
        artifacts=artifacts,
    )


def _processing_status(data: dict) -> JobStatus:
    outputs = (data.get("ProcessingOutputConfig") or {}).get("Outputs", [])
    return JobStatus(
        name=data["ProcessingJobName"],
        kind="evaluate",
        status=data["ProcessingJobStatus"],
        reason=data.get("FailureReason") or data.get("ExitMessage", ""),
        created=data.get("CreationTime"),
        artifacts={o["OutputName"]: o["S3Output"]["S3Uri"] for o in outputs if o.get("S3Output")},
    )


def describe(aws: Aws, name: str, kind: str | None = None, client=None) -> JobStatus:
    """The job's state; `kind` None tries a training job, then a processing job."""
    from botocore.exceptions import ClientError

    client = client or aws.client("sagemaker")
    for candidate in ("train", "evaluate") if kind is None else (kind,):
        try:
            if candidate == "train":
                return _training_status(client.describe_training_job(TrainingJobName=name))
            return _processing_status(client.describe_processing_job(ProcessingJobName=name))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ValidationException":
                raise
    what = {None: "training or processing job", "train": "training job", "evaluate": "processing job"}[kind]
    raise LaunchError(f"no {what} named {name!r} in {aws.region}")


class LogTail:
    """New CloudWatch log lines of a job's streams (`<job>/algo-...`), oldest first."""

    def __init__(self, client, kind: str, name: str):
        self.client, self.group, self.prefix = client, LOG_GROUPS[kind], name + "/"
        self.start, self.seen, self.enabled = 0, set(), True

    def poll(self) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        if not self.enabled:
            return []
        events = []
        try:
            pages = self.client.get_paginator("filter_log_events").paginate(
                logGroupName=self.group, logStreamNamePrefix=self.prefix, startTime=self.start
            )
            for page in pages:
                events += page.get("events", [])
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "ResourceNotFoundException":  # no logs yet
                return []
            self.enabled = False
            return [f"(logs unavailable: {code}; status only from now on)"]
        except BotoCoreError as exc:
            self.enabled = False
            return [f"(logs unavailable: {exc}; status only from now on)"]
        lines = []
        for event in sorted(events, key=lambda e: (e["timestamp"], e.get("eventId", ""))):
            key = event.get("eventId") or (event["logStreamName"], event["timestamp"], event["message"])
            if key not in self.seen:
                self.seen.add(key)
                lines.append(event["message"].rstrip("\n"))
                self.start = max(self.start, event["timestamp"])
        return lines


def wait(
    aws: Aws,
    name: str,
    kind: str | None = None,
    poll: float = 30.0,
    timeout: float = 0.0,
    logs: bool = True,
    out=None,
) -> JobStatus:
    """Poll until the job ends, printing each status change (and new log lines)."""
    out = out or sys.stdout
    client = aws.client("sagemaker")
    status = describe(aws, name, kind, client)
    tail = LogTail(aws.client("logs"), status.kind, name) if logs else None
    started, shown = time.monotonic(), None
    while True:
        for line in tail.poll() if tail else []:
            print(line, file=out, flush=True)
        if (status.status, status.secondary) != shown:
            shown = (status.status, status.secondary)
            print(status.line(), file=out, flush=True)
        if status.status in TERMINAL:
            return status
        if timeout and time.monotonic() - started >= timeout:
            raise LaunchError(
                f"{name} is still {status.status} after {timeout:g} s; wait again: detox-launch wait {name}",
                EXIT_TIMEOUT,
            )
        time.sleep(poll)
        status = describe(aws, name, status.kind, client)


def stop(aws: Aws, name: str) -> JobStatus:
    client = aws.client("sagemaker")
    status = describe(aws, name, client=client)
    if status.status in TERMINAL:
        raise LaunchError(f"{name} has already ended: {status.status}")
    if status.kind == "train":
        client.stop_training_job(TrainingJobName=name)
    else:
        client.stop_processing_job(ProcessingJobName=name)
    return describe(aws, name, status.kind, client)


def list_jobs(
    aws: Aws, kind: str = "all", status: str | None = None, name_contains: str = "", limit: int = 20
) -> list[JobStatus]:
    client = aws.client("sagemaker")
    query = {"SortBy": "CreationTime", "SortOrder": "Descending", "MaxResults": min(max(limit, 1), 100)}
    if status:
        query["StatusEquals"] = status
    if name_contains:
        query["NameContains"] = name_contains
    jobs = []
    if kind in ("all", "train"):
        for item in client.list_training_jobs(**query).get("TrainingJobSummaries", []):
            job = _training_status(item)
            if job.status == "Failed":  # training summaries carry no FailureReason
                job.reason = describe(aws, job.name, "train", client).reason
            jobs.append(job)
    if kind in ("all", "evaluate"):
        for item in client.list_processing_jobs(**query).get("ProcessingJobSummaries", []):
            jobs.append(_processing_status(item))
    jobs.sort(key=lambda j: j.created.timestamp() if j.created else 0, reverse=True)
    return jobs[:limit]
