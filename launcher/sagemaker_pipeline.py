"""The native SageMaker Pipeline: train -> evaluate (-> merge) -> quality gate -> register or fail.

Built with the SageMaker SDK's workflow classes from the same job definitions the launcher submits
(`jobs.TrainJob`, `jobs.EvalJob`), so a setting means the same in both. The gate reads the
evaluation's `report.json` (`verdict.*`) with JsonGet and passes when the detoxification is
significant (`toxicity_diff_ci_high < 0`) and the summaries are kept
(`rouge_l_diff_ci_low > MinRougeLDiff`, which is -max_rouge_drop: pipeline conditions compare with
a value and cannot negate one). On pass the adapter is registered as a model package pending
manual approval; on fail a FailStep quotes the figures.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import dataclass

from flan_t5_detox.contract import s3
from flan_t5_detox.contract.paths import CONTAINER, REPORT_OUTPUT
from flan_t5_detox.contract.settings import TrainConfig

from . import sagemaker_backend
from .jobs import EvalJob, TrainJob, merge_job

# The SDK warns, for every step, that SageMaker will name the jobs: that is the design here.
for _name in ("sagemaker.workflow.utilities", "sagemaker.workflow._utils"):
    logging.getLogger(_name).setLevel(logging.ERROR)

# Step names: the graph in the README is drawn from these (tests/launcher/test_sagemaker_pipeline.py).
TRAIN, EVALUATE, MERGE, GATE, REGISTER, FAIL = (
    "Train",
    "Evaluate",
    "MergeReport",
    "QualityGate",
    "RegisterAdapter",
    "GateFailed",
)
REPORT_FILE = "report.json"
APPROVAL = "PendingManualApproval"
# Retried: capacity and throttling are transient, a failed job with the same inputs is not.
JOB_RETRIES = ("CAPACITY_ERROR", "RESOURCE_LIMIT", "INTERNAL_ERROR")
STEP_RETRIES = ("SERVICE_FAULT", "THROTTLING")
CACHE_FOR = "P30D"  # a cached train or evaluate step is reused for 30 days
DESCRIPTION = "flan-t5-detox: PPO detoxification, evaluation, quality gate, Model Registry"


@dataclass
class PipelineSpec:
    """What a pipeline definition is made of. `train` and `evaluate` are the launcher's job
    definitions; their instance settings and inputs become the parameters' defaults, and the
    evaluation's input `detoxified` (and `training_output`) come from the train step instead."""

    name: str
    train: TrainJob
    evaluate: EvalJob
    max_rouge_drop: float
    model_package_group: str


def _parameters(spec: PipelineSpec):
    from sagemaker.workflow.parameters import ParameterFloat, ParameterInteger, ParameterString

    hp = spec.train.hyperparameters  # validated and JSON-encoded by jobs.train_job
    steps = TrainConfig().max_ppo_steps
    params = {
        "TrainInstanceType": ParameterString("TrainInstanceType", spec.train.resources.instance_type),
        "TrainInstanceCount": ParameterInteger("TrainInstanceCount", spec.train.resources.instance_count),
        "EvaluateInstanceType": ParameterString(
            "EvaluateInstanceType", spec.evaluate.resources.instance_type
        ),
        "PpoSteps": ParameterInteger("PpoSteps", int(json.loads(hp.get("max_ppo_steps", "null")) or steps)),
        "MinRougeLDiff": ParameterFloat("MinRougeLDiff", -spec.max_rouge_drop),
    }
    # One parameter per input given, named after it (e.g. InputPeftCheckpoint).
    for name, uri in {**spec.train.channels, **spec.evaluate.inputs}.items():
        if name in ("detoxified", "training_output"):
            continue
        key = "Input" + "".join(part.title() for part in name.split("_"))
        params.setdefault(key, ParameterString(key, uri))
    return params


def _input(params: dict, name: str):
    return params["Input" + "".join(part.title() for part in name.split("_"))]


def _retries() -> list:
    from sagemaker.workflow.retry import (
        SageMakerJobExceptionTypeEnum,
        SageMakerJobStepRetryPolicy,
        StepExceptionTypeEnum,
        StepRetryPolicy,
    )

    # The SDK's local executor ignores these and runs each step once.
    return [
        StepRetryPolicy([StepExceptionTypeEnum[e] for e in STEP_RETRIES], max_attempts=3, backoff_rate=2.0),
        SageMakerJobStepRetryPolicy(
            [SageMakerJobExceptionTypeEnum[e] for e in JOB_RETRIES], max_attempts=5, backoff_rate=2.0
        ),
    ]


def _train_step(spec: PipelineSpec, params: dict, session):
    from sagemaker.inputs import TrainingInput
    from sagemaker.workflow.execution_variables import ExecutionVariables
    from sagemaker.workflow.functions import Join
    from sagemaker.workflow.steps import CacheConfig, TrainingStep

    job = spec.train
    hyperparameters = {**job.hyperparameters, "max_ppo_steps": params["PpoSteps"]}
    # Spot jobs resume from checkpoints: one folder per execution, so an execution never resumes
    # another's run.
    checkpoint = job.checkpoint_s3_uri or None
    if job.spot and checkpoint is None:
        checkpoint = Join(
            "/", [job.output_path, spec.name, "checkpoints", ExecutionVariables.PIPELINE_EXECUTION_ID]
        )
    estimator = sagemaker_backend.estimator(
        job,
        session,
        instance_count=params["TrainInstanceCount"],
        instance_type=params["TrainInstanceType"],
        hyperparameters=hyperparameters,
        checkpoint_s3_uri=checkpoint,
        checkpoint_local_path=str(CONTAINER.checkpoints) if checkpoint else None,
    )
    channels = {name: TrainingInput(_input(params, name)) for name in job.channels}
    return TrainingStep(
        name=TRAIN,
        step_args=estimator.fit(inputs=channels or None),
        cache_config=CacheConfig(enable_caching=True, expire_after=CACHE_FOR),
        retry_policies=_retries(),
    )


def _processing_step(name: str, job: EvalJob, inputs: dict, report_uri, params: dict, session, **kw):
    from sagemaker.workflow.steps import CacheConfig, ProcessingStep

    processor = sagemaker_backend.processor(job, session, instance_type=params["EvaluateInstanceType"])
    inputs, outputs = sagemaker_backend.processing_io(inputs, report_uri)
    step_args = processor.run(inputs=inputs, outputs=outputs, arguments=job.arguments or None)
    return ProcessingStep(
        name=name,
        step_args=step_args,
        cache_config=CacheConfig(enable_caching=True, expire_after=CACHE_FOR),
        retry_policies=_retries(),
        **kw,
    )


def build(spec: PipelineSpec, session, local: bool = False):
    """The Pipeline on `session` (a PipelineSession, or a LocalPipelineSession with `local`: the
    SDK's local executor cannot register a model, so the pass branch is then empty)."""
    with warnings.catch_warnings():  # "Running within a PipelineSession ... No Job being started": yes
        warnings.simplefilter("ignore", UserWarning)
        return _build(spec, session, local)


def _build(spec: PipelineSpec, session, local: bool):
    from sagemaker.model import Model
    from sagemaker.model_metrics import MetricsSource, ModelMetrics
    from sagemaker.workflow.condition_step import ConditionStep
    from sagemaker.workflow.conditions import ConditionGreaterThan, ConditionLessThan
    from sagemaker.workflow.fail_step import FailStep
    from sagemaker.workflow.functions import Join, JsonGet
    from sagemaker.workflow.model_step import ModelStep
    from sagemaker.workflow.pipeline import Pipeline
    from sagemaker.workflow.properties import PropertyFile

    params = _parameters(spec)
    train = _train_step(spec, params, session)
    trained = train.properties.ModelArtifacts.S3ModelArtifacts
    # Everything an execution writes is under the training job's folder, named by SageMaker: a
    # cached train step gives the same name, so the evaluation's arguments match and it is cached too.
    job_root = [spec.train.output_path, train.properties.TrainingJobName]
    inputs = {
        n: _input(params, n) for n in spec.evaluate.inputs if n not in ("detoxified", "training_output")
    }
    inputs["detoxified"] = trained
    inputs["training_output"] = Join("/", [*job_root, "output", "output.tar.gz"])
    report = PropertyFile(name="Report", output_name=REPORT_OUTPUT, path=REPORT_FILE)
    sharded = spec.evaluate.resources.instance_count > 1
    evaluate_uri = Join("/", [*job_root, "evaluation", "parts" if sharded else REPORT_OUTPUT])
    extra = {} if sharded else {"property_files": [report]}
    evaluate = _processing_step(EVALUATE, spec.evaluate, inputs, evaluate_uri, params, session, **extra)
    steps = [train, evaluate]
    report_step = evaluate
    if sharded:
        merge = merge_job(spec.evaluate)
        report_step = _processing_step(
            MERGE,
            merge,
            {"parts": evaluate.properties.ProcessingOutputConfig.Outputs[REPORT_OUTPUT].S3Output.S3Uri},
            Join("/", [*job_root, "evaluation", REPORT_OUTPUT]),
            params,
            session,
            property_files=[report],
        )
        steps.append(report_step)
    report_uri = report_step.properties.ProcessingOutputConfig.Outputs[REPORT_OUTPUT].S3Output.S3Uri

    def figure(path: str):
        return JsonGet(step_name=report_step.name, property_file=report, json_path=f"verdict.{path}")

    min_rouge = params["MinRougeLDiff"]
    fail = FailStep(
        name=FAIL,
        error_message=Join(
            "",
            [
                "quality gate failed: toxicity difference (after - before, ",
                figure("toxicity_metric"),
                " by ",
                figure("toxicity_judge"),
                ") ",
                figure("toxicity_diff"),
                ", 95% CI high ",
                figure("toxicity_diff_ci_high"),
                " (must be < 0); ROUGE-L difference ",
                figure("rouge_l_diff"),
                ", 95% CI low ",
                figure("rouge_l_diff_ci_low"),
                " (must be > ",
                min_rouge,
                "); ",
                figure("sample_size"),
                " test dialogues",
            ],
        ),
    )
    passed = []
    if not local:
        passed = [
            ModelStep(  # the SDK's current form of RegisterModel: a RegisterModel step in the definition
                name=REGISTER,
                step_args=Model(
                    image_uri=spec.train.image,
                    model_data=trained,
                    role=spec.train.role,
                    sagemaker_session=session,
                ).register(
                    content_types=["application/json"],
                    response_types=["application/json"],
                    model_package_group_name=spec.model_package_group,
                    approval_status=APPROVAL,
                    model_metrics=ModelMetrics(
                        model_statistics=MetricsSource(
                            s3_uri=Join("/", [report_uri, REPORT_FILE]), content_type="application/json"
                        )
                    ),
                    description="FLAN-T5 LoRA adapter detoxified by PPO; passed the pipeline's quality gate",
                ),
                retry_policies=_retries()[:1],
            )
        ]
    gate = ConditionStep(
        name=GATE,
        conditions=[
            ConditionLessThan(left=figure("toxicity_diff_ci_high"), right=0.0),
            ConditionGreaterThan(left=figure("rouge_l_diff_ci_low"), right=min_rouge),
        ],
        if_steps=passed,
        else_steps=[fail],
    )
    return Pipeline(
        name=spec.name,
        parameters=list(params.values()),
        steps=[*steps, gate],
        pipeline_experiment_config=None,  # no Experiment and Trial per execution
        sagemaker_session=session,
    )


def offline_session(region: str | None):
    """A PipelineSession that calls nothing: building a definition needs a region, no credentials."""
    import boto3
    from sagemaker.workflow.pipeline_context import PipelineSession

    session = boto3.Session(region_name=region or "us-east-1")
    return PipelineSession(boto_session=session, sagemaker_config=sagemaker_backend.sdk_config())


def definition(pipeline) -> dict:
    return json.loads(pipeline.definition())


# --- the graph, read from a definition -----------------------------------------------------------


def _step_references(value) -> set[str]:
    """Names of the steps whose properties or property files `value` reads."""
    found = set()
    if isinstance(value, dict):
        get = value.get("Get")
        if isinstance(get, str) and get.startswith("Steps."):
            found.add(get.split(".")[1])
        for item in value.values():
            found |= _step_references(item)
    elif isinstance(value, list):
        for item in value:
            found |= _step_references(item)
    return found


def edges(pipeline_definition: dict) -> set[tuple[str, str, str]]:
    """(from, to, label) for every edge of the definition's graph: data edges (a step reads
    another's properties), DependsOn, and a condition's branches ("pass"/"fail")."""
    found = set()

    def walk(steps: list[dict]) -> None:
        for step in steps:
            name, arguments = step["Name"], step.get("Arguments", {})
            for source in step.get("DependsOn", []):
                found.add((source, name, ""))
            if step["Type"] == "Condition":
                for source in _step_references(arguments.get("Conditions", [])):
                    found.add((source, name, ""))
                for label, key in (("pass", "IfSteps"), ("fail", "ElseSteps")):
                    for branch in arguments.get(key, []):
                        found.add((name, branch["Name"], label))
                    walk(arguments.get(key, []))
                continue
            for source in _step_references(arguments) - {name}:
                found.add((source, name, ""))

    walk(pipeline_definition["Steps"])
    # A branch step reading the condition's own inputs (the FailStep's figures) adds no edge of
    # its own: the branch edge already orders it after the condition.
    branches = {target for _, target, label in found if label}
    return {(a, b, label) for a, b, label in found if label or b not in branches}


def _node(name: str) -> str:
    return re.sub(r"\W", "_", name)  # mermaid ids are words; the label keeps the step's name


def mermaid(pipeline_definition: dict) -> str:
    """The graph as a mermaid flowchart: one node a line (its name and step type), then one edge a
    line, sorted."""
    types = {}

    def collect(steps: list[dict]) -> None:
        for step in steps:
            types[step["Name"]] = step["Type"]
            for key in ("IfSteps", "ElseSteps"):
                collect(step.get("Arguments", {}).get(key, []))

    collect(pipeline_definition["Steps"])
    lines = ["graph TD"]
    lines += [f'    {_node(name)}["{name}<br/>{kind}"]' for name, kind in sorted(types.items())]
    for source, target, label in sorted(edges(pipeline_definition)):
        arrow = f"-->|{label}|" if label else "-->"
        lines.append(f"    {_node(source)} {arrow} {_node(target)}")
    return "\n".join(lines) + "\n"


MERMAID_NODE = re.compile(r'^\s*(\w+)\["([^"<]+)<br/>\w+"\]\s*$', re.M)
MERMAID_EDGE = re.compile(r"^\s*(\w+) -->(?:\|(\w+)\|)? (\w+)\s*$", re.M)


def drawn_edges(text: str) -> set[tuple[str, str, str]]:
    """The edges of a mermaid flowchart as `mermaid` writes it, by step name."""
    names = dict(MERMAID_NODE.findall(text))
    return {(names[a], names[b], label) for a, label, b in MERMAID_EDGE.findall(text)}


def report_location(output_path: str) -> str:
    """Where an execution's report lands, for the user: under the training job's folder."""
    return s3.join(output_path, "<training job>", "evaluation", REPORT_OUTPUT, REPORT_FILE)
