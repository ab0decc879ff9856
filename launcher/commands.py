"""What each `detox-launch` subcommand does, given resolved Options. Output goes to `out`."""

from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path

from flan_t5_detox.contract import s3
from flan_t5_detox.contract.hosts import host_name, host_names
from flan_t5_detox.contract.paths import EVAL_INPUTS, REPORT_OUTPUT

from . import jobs, local_backend
from . import sagemaker_backend as sm
from . import sagemaker_pipeline as native
from .aws import Aws, connect
from .errors import EXIT_FAILED, EXIT_STOPPED, LaunchError
from .options import Options
from .sagemaker_pipeline import PipelineSpec


def _ended(status: sm.JobStatus) -> int:
    """Exit code for a finished job; a failure is an error with SageMaker's reason."""
    if status.status == "Completed":
        return 0
    if status.status == "Stopped":
        raise LaunchError(f"{status.name} was stopped", EXIT_STOPPED)
    raise LaunchError(f"{status.name} failed: {status.reason or 'no reason given'}", EXIT_FAILED)


def _follow(aws: Aws, name: str, options: Options, out, kind: str | None = None) -> sm.JobStatus:
    return sm.wait(aws, name, kind, options.poll, options.timeout, options.logs, out)


def _submitted(aws: Aws, kind: str, name: str, where: str, out) -> None:
    console = f"https://{aws.region}.console.aws.amazon.com/sagemaker/home?region={aws.region}#/{kind}/{name}"
    print(f"submitted {name}\n  results: {where}\n  console: {console}", file=out)
    print(f"  follow:  detox-launch wait {name}", file=out, flush=True)


def _with_train_job(aws: Aws, options: Options) -> Options:
    """--train-job NAME supplies the detoxified model and the training output."""
    if not options.train_job:
        return options
    status = sm.describe(aws, options.train_job, "train")
    if status.status != "Completed" or not status.artifacts:
        raise LaunchError(f"train job {status.name} is {status.status}; evaluate needs a completed one")
    options.detoxified = options.detoxified or status.artifacts["model"]
    options.training_output = options.training_output or _existing(aws, status.artifacts["output"])
    return options


def _existing(aws: Aws, uri: str) -> str | None:
    """`uri` if something is there (a job that wrote no output data has no output.tar.gz)."""
    return uri if s3.list_objects(uri, aws.client("s3")) else None


def train(options: Options, out) -> int:
    job = jobs.train_job(options)
    aws = connect(options)
    sm.submit_training(aws, job)
    _submitted(aws, "jobs", job.name, job.model_artifacts, out)
    return _ended(_follow(aws, job.name, options, out, "train")) if options.wait else 0


def evaluate(options: Options, out) -> int:
    aws = connect(options)
    job = jobs.eval_job(_with_train_job(aws, options))
    if job.resources.instance_count > 1 and not options.wait:
        raise LaunchError("an evaluation on several instances needs --wait: its merge job runs after it")
    if not options.wait:
        sm.submit_processing(aws, job)
        _submitted(aws, "processing-jobs", job.name, job.report_uri, out)
        return 0
    _evaluated(aws, job, options, out)
    return 0


def _evaluated(aws: Aws, job: jobs.EvalJob, options: Options, out) -> jobs.EvalJob:
    """Run `job` to the end; on several instances, then the merge of its hosts' parts. Returns the
    job whose output is the report."""
    sm.submit_processing(aws, job)
    _submitted(aws, "processing-jobs", job.name, job.report_uri, out)
    _ended(_follow(aws, job.name, options, out, "evaluate"))
    if job.resources.instance_count == 1:
        return job
    merge = jobs.merge_job(job)
    sm.submit_processing(aws, merge)
    _submitted(aws, "processing-jobs", merge.name, merge.report_uri, out)
    _ended(_follow(aws, merge.name, options, out, "evaluate"))
    return merge


def _chained_jobs(options: Options) -> tuple[jobs.TrainJob, jobs.EvalJob]:
    """The train job and the evaluation of what it trains, both validated before anything runs."""
    stamp = jobs.timestamp()  # one timestamp names both jobs
    train_job = jobs.train_job(options, name=jobs.job_name("detox-train", stamp))
    # The evaluation's "before" model is the adapter the training started from.
    peft = options.peft_checkpoint or options.hyperparameters.get("peft_checkpoint_s3_uri")
    options.peft_checkpoint = peft or None
    options.detoxified, options.training_output = train_job.model_artifacts, train_job.output_artifacts
    return train_job, jobs.eval_job(options, name=jobs.job_name("detox-evaluate", stamp))


def pipeline(options: Options, dest: Path, out) -> int:
    """train -> wait -> evaluate the trained model -> wait (-> merge the hosts' parts -> wait) -> fetch
    the report."""
    train_job, eval_job = _chained_jobs(options)
    aws = connect(options)

    sm.submit_training(aws, train_job)
    _submitted(aws, "jobs", train_job.name, train_job.model_artifacts, out)
    trained = _follow(aws, train_job.name, options, out, "train")
    _ended(trained)
    eval_job.inputs["detoxified"] = trained.artifacts.get("model", train_job.model_artifacts)
    if not _existing(aws, eval_job.inputs["training_output"]):
        del eval_job.inputs["training_output"]
    reported = _evaluated(aws, eval_job, options, out)
    return fetch(options, reported.name, dest, out, aws)


def pipeline_spec(options: Options) -> PipelineSpec:
    """The native pipeline's definition, from the same job definitions `pipeline` submits."""
    if options.max_rouge_drop < 0:
        raise LaunchError("--max-rouge-drop must be >= 0 (the ROUGE-L loss the gate accepts)")
    train_job, eval_job = _chained_jobs(options)
    # SageMaker names the pipeline's jobs; a checkpoint folder is per execution unless given.
    train_job.checkpoint_s3_uri = options.checkpoint_s3_uri or ""
    return PipelineSpec(
        name=options.pipeline_name,
        train=train_job,
        evaluate=eval_job,
        max_rouge_drop=options.max_rouge_drop,
        model_package_group=options.model_package_group,
    )


def native_pipeline(options: Options, dry_run: bool, out) -> int:
    """Define the SageMaker Pipeline; print it (`dry_run`, no AWS call), or create/update it and
    start an execution."""
    spec = pipeline_spec(options)
    if dry_run:
        pipeline = native.build(spec, native.offline_session(options.region))
        print(json.dumps(native.definition(pipeline), indent=2), file=out)
        return 0
    aws = connect(options)
    trained = ("detoxified", "training_output")  # made by the train step
    inputs = {n: uri for n, uri in spec.evaluate.inputs.items() if n not in trained}
    sm.check_inputs(aws, spec.train.output_path, {**spec.train.channels, **inputs})
    bucket = s3.parse_s3_uri(spec.train.output_path)[0]
    pipeline = native.build(spec, sm.sdk_session(aws, bucket, pipeline=True))
    pipeline.upsert(role_arn=spec.train.role, description=native.DESCRIPTION)
    execution = pipeline.start()
    console = f"https://{aws.region}.console.aws.amazon.com/sagemaker/home?region={aws.region}#/pipelines"
    print(f"pipeline {spec.name} defined; started execution {execution.arn}", file=out)
    print(f"  report:  {native.report_location(spec.train.output_path)}", file=out)
    print(f"  console: {console}", file=out)
    print(
        f"  follow:  aws sagemaker list-pipeline-execution-steps --pipeline-execution-arn {execution.arn}",
        file=out,
    )
    return 0


def wait(options: Options, name: str, out) -> int:
    return _ended(_follow(connect(options), name, options, out))


def stop(options: Options, name: str, out) -> int:
    aws = connect(options)
    status = sm.stop(aws, name)
    print(status.line(), file=out)
    return _ended(_follow(aws, name, options, out, status.kind)) if options.wait else 0


def list_jobs(options: Options, kind: str, status: str | None, name_contains: str, limit: int, out):
    found = sm.list_jobs(connect(options), kind, status, name_contains, limit)
    rows = [("NAME", "KIND", "STATUS", "CREATED", "REASON")]
    for job in found:
        created = job.created.strftime("%Y-%m-%d %H:%M:%S") if job.created else ""
        rows.append(
            (job.name, job.kind, job.status, created, job.reason.splitlines()[0] if job.reason else "")
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4], file=out)
    return 0


def fetch(options: Options, target: str, dest: Path, out, aws: Aws | None = None) -> int:
    from .artifacts import fetch_artifacts

    aws = aws or connect(options)
    if target.startswith("s3://"):
        s3.parse_s3_uri(target)
        artifacts = {"": target}
    else:
        status = sm.describe(aws, target)
        if status.status not in sm.TERMINAL:
            raise LaunchError(f"{status.name} is {status.status}: nothing to fetch until it ends")
        artifacts = status.artifacts
    fetch_artifacts(artifacts, Path(dest), aws.client("s3"), out)
    return 0


def upload(options: Options, source: Path, uri: str, out) -> int:
    s3.parse_s3_uri(uri)
    if not source.exists():
        raise LaunchError(f"nothing to upload at {source}")
    aws = connect(options)
    client = aws.client("s3")
    s3.require_bucket(s3.parse_s3_uri(uri)[0], client)
    uploaded = s3.upload(source, uri, client)
    print(f"uploaded {len(uploaded)} file(s) to {uri}", file=out)
    return 0


def local(options: Options, kind: str, dry_run: bool, out) -> int:
    """Run a job on this machine: build the /opt/ml layout, then docker run or a plain process."""
    if kind == "train" and options.instance_count > 1 and options.docker:
        raise LaunchError(
            "a local train job on several instances runs its hosts as plain processes: add --no-docker "
            "(or use SageMaker's local mode, which puts the containers on one network)"
        )
    sources = [getattr(options, n) or "" for n in EVAL_INPUTS] + [options.checkpoint_s3_uri or ""]
    aws = connect(options) if options.train_job or any(s.startswith("s3://") for s in sources) else None
    if kind == "train":
        job = jobs.train_job(
            options, cloud=False, name=options.job_name or jobs.job_name("detox-train-local")
        )
    else:
        options = _with_train_job(aws, options) if aws else options
        job = jobs.eval_job(
            options, cloud=False, name=options.job_name or jobs.job_name("detox-evaluate-local")
        )
    root = Path(options.work_dir or Path("detox-local") / job.name)
    client = aws.client("s3") if aws else None
    if kind == "evaluate" and job.resources.instance_count > 1:
        if dry_run:
            raise LaunchError(
                "--dry-run shows one job; an evaluation on several instances is one per host and a merge"
            )
        return _local_sharded(options, job, root, client, out)
    if kind == "train" and job.resources.instance_count > 1:
        return _local_hosts(options, job, root, client, dry_run, out)
    prepare = local_backend.prepare_training if kind == "train" else local_backend.prepare_processing
    run = prepare(job, root, client)
    print(f"{job.name}: /opt/ml layout at {run.root}", file=out)
    if dry_run:  # the layout is complete, so the printed command can be run by hand
        if options.docker:
            command = local_backend.docker_command(run, job.image, job.environment, options.network)
        else:
            local_backend.link_mounts(run)
            command = local_backend.process_command(run)
        print(shlex.join(command), file=out)  # safe to paste: values with spaces or $(...) stay whole
        return 0
    _run_local(run, job, options, client, out)
    return 0


def _run_local(run: local_backend.LocalRun, job, options: Options, client, out) -> None:
    started = time.monotonic()
    code = local_backend.execute(run, options.docker, job.image, job.environment, options.network, client)
    elapsed = time.monotonic() - started
    if code != 0:
        reason = run.failure or f"exit code {code}"
        raise LaunchError(f"{job.name} failed after {elapsed:.0f} s: {reason}", EXIT_FAILED)
    print(f"{job.name}: Completed in {elapsed:.0f} s", file=out)
    for name, path in run.outputs.items():
        print(f"  {name}: {path}", file=out)


def _local_hosts(options: Options, job: jobs.TrainJob, root: Path, client, dry_run: bool, out) -> int:
    """A training job on N instances, here: N plain processes at once, each host with its own
    /opt/ml (root/<host>); rank 0's (algo-1's) model/ and output/ are the job's."""
    if dry_run:
        raise LaunchError("--dry-run shows one job; a train job on several instances is one process per host")
    hosts = host_names(job.resources.instance_count)
    runs = [local_backend.prepare_training(job, root / host, client, host) for host in hosts]
    print(f"{job.name}: {len(hosts)} hosts, /opt/ml layouts under {root}", file=out)
    started = time.monotonic()
    code = local_backend.execute_hosts(runs, job.environment, client)
    elapsed = time.monotonic() - started
    if code != 0:
        reason = next((run.failure for run in runs if run.failure), f"exit code {code}")
        raise LaunchError(f"{job.name} failed after {elapsed:.0f} s: {reason}", EXIT_FAILED)
    print(f"{job.name}: Completed in {elapsed:.0f} s", file=out)
    for name, path in runs[0].outputs.items():
        print(f"  {name}: {path}", file=out)
    return 0


def _local_sharded(options: Options, job: jobs.EvalJob, root: Path, client, out) -> int:
    """An evaluation on N instances, here: each host in turn with its own /opt/ml (root/<host>),
    its part collected into root/parts, then the merge job (root/merge) writes the report."""
    if float(options.evaluate.get("wait_for_hosts", 0)):
        raise LaunchError(
            "wait_for_hosts: here the hosts run in turn, so a host would wait for hosts that have not "
            "started; leave it at 0 (it is for the SageMaker SDK's local mode, whose hosts run at once)"
        )
    parts = root / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    for index in range(job.resources.instance_count):
        host = host_name(index)
        run = local_backend.prepare_processing(job, root / host, client, host)
        print(f"{job.name} ({host}): /opt/ml layout at {run.root}", file=out)
        _run_local(run, job, options, client, out)
        for part in run.outputs[REPORT_OUTPUT].glob("part-*.json"):
            shutil.copy2(part, parts / part.name)
    merge = jobs.merge_job(job)
    merge.inputs = {"parts": str(parts)}
    run = local_backend.prepare_processing(merge, root / "merge", client)
    print(f"{merge.name}: /opt/ml layout at {run.root}", file=out)
    _run_local(run, merge, options, client, out)
    return 0
