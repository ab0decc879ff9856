"""detox_launcher.sagemaker_pipeline: the cloud definition of the native pipeline. Its job requests
are checked against SageMaker's service model (botocore's), the definition reaches the API
(CreatePipeline, StartPipelineExecution on moto, tests/servers.py), and so does the registration
request the pass branch makes. The README's picture of the graph is the definition's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from detox_launcher import commands
from detox_launcher import sagemaker_pipeline as native
from detox_launcher.options import Options

from tests.launcher.account import BUCKET, IMAGE, put, service_model_errors
from tests.servers import ACCOUNT, ISOLATION, REGION, ROLE

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = f"s3://{BUCKET}/flan-t5-detox"
# What an execution's steps would report, for the property references of later steps.
TRAIN_JOB = "pipelines-abc123-Train-XyZ"
PROPERTIES = {
    "Steps.Train.TrainingJobName": TRAIN_JOB,
    "Steps.Train.ModelArtifacts.S3ModelArtifacts": f"{OUTPUT}/{TRAIN_JOB}/output/model.tar.gz",
    "Steps.Evaluate.ProcessingOutputConfig.Outputs['report'].S3Output.S3Uri": (
        f"{OUTPUT}/{TRAIN_JOB}/evaluation/report"
    ),
    "Steps.MergeReport.ProcessingOutputConfig.Outputs['report'].S3Output.S3Uri": (
        f"{OUTPUT}/{TRAIN_JOB}/evaluation/report"
    ),
    "Execution.PipelineExecutionId": "exec-1",
}
OPERATIONS = {  # step type -> the API request SageMaker makes for it, and the name it adds
    "Training": ("CreateTrainingJob", {"TrainingJobName": "pipelines-abc123-Train-XyZ"}),
    "Processing": ("CreateProcessingJob", {"ProcessingJobName": "pipelines-abc123-Evaluate-XyZ"}),
    "RegisterModel": ("CreateModelPackage", {}),
}


def _inputs(aws=None) -> dict[str, str]:
    """The train job's four inputs and the evaluation's judge (S3 folders); with `aws`, something
    in each."""
    names = ("base_model", "peft_checkpoint", "reward_model", "dataset", "judge_model")
    uris = {name: f"s3://{BUCKET}/inputs/{name}/" for name in names}
    for uri in uris.values() if aws is not None else ():
        put(aws, uri.split("/", 3)[3] + "config.json")
    return uris


def _spec(instance_count: int = 1, **overrides) -> native.PipelineSpec:
    options = Options(
        image=IMAGE,
        role=ROLE,
        bucket=BUCKET,
        instance_count=instance_count,
        hyperparameters={"max_ppo_steps": 20, "learning_rate": 2e-5},
        evaluate={"num_samples": 300},
        tags={"team": "ml"},
        **_inputs(),
        **overrides,
    )
    return commands.pipeline_spec(options)


def _definition(spec: native.PipelineSpec) -> dict:
    return native.definition(native.build(spec, native.offline_session(REGION)))


def _steps(definition: dict) -> dict[str, dict]:
    """Every step by name, those inside the condition's branches too."""
    found = {}
    for step in definition["Steps"]:
        found[step["Name"]] = step
        for branch in ("IfSteps", "ElseSteps"):
            found.update(_steps({"Steps": step["Arguments"].get(branch, [])}))
    return found


def _resolved(value, values: dict):
    """`value` with pipeline references replaced by what an execution would put there; a
    reference the test does not know is a KeyError."""
    if isinstance(value, list):
        return [_resolved(v, values) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"Get"}:
        return values[value["Get"]]
    if set(value) == {"Std:Join"}:
        join = value["Std:Join"]
        return join["On"].join(str(_resolved(v, values)) for v in join["Values"])
    return {k: _resolved(v, values) for k, v in value.items()}


def _values(definition: dict) -> dict:
    defaults = {f"Parameters.{p['Name']}": p["DefaultValue"] for p in definition["Parameters"]}
    return {**defaults, **PROPERTIES}


@pytest.mark.parametrize("instance_count", [1, 2])
def test_every_job_request_of_the_definition_satisfies_the_service_model(instance_count):
    spec = _spec(instance_count, keep_alive=None)
    definition = _definition(spec)
    checked = []
    for name, step in _steps(definition).items():
        if step["Type"] in OPERATIONS:
            operation, added = OPERATIONS[step["Type"]]
            request = {**_resolved(step["Arguments"], _values(definition)), **added}
            assert service_model_errors(operation, request) == "", name
            checked.append((name, operation))
    expected = [
        (native.TRAIN, "CreateTrainingJob"),
        (native.EVALUATE, "CreateProcessingJob"),
        *([(native.MERGE, "CreateProcessingJob")] if instance_count > 1 else []),
        (f"{native.REGISTER}-RegisterModel", "CreateModelPackage"),
    ]
    assert sorted(checked) == sorted(expected)


def test_the_definition_carries_the_parameters_the_gate_and_the_policies():
    definition = _definition(_spec(2, spot=False))
    parameters = {p["Name"]: (p["Type"], p["DefaultValue"]) for p in definition["Parameters"]}
    assert parameters == {
        "TrainInstanceType": ("String", "ml.m5.2xlarge"),
        "TrainInstanceCount": ("Integer", 2),
        "EvaluateInstanceType": ("String", "ml.m5.2xlarge"),
        "PpoSteps": ("Integer", 20),
        "MinRougeLDiff": ("Float", -0.05),
        **{
            "Input" + "".join(p.title() for p in name.split("_")): ("String", uri)
            for name, uri in _inputs().items()
        },
    }
    steps = _steps(definition)
    train = _resolved(steps[native.TRAIN]["Arguments"], _values(definition))
    assert train["HyperParameters"]["max_ppo_steps"] == "20"  # from the PpoSteps parameter
    assert train["ResourceConfig"]["InstanceCount"] == 2
    channels = {c["ChannelName"] for c in train["InputDataConfig"]}
    assert channels == {
        "base_model",
        "peft_checkpoint",
        "reward_model",
        "dataset",
    }  # the judge evaluates only
    # The sharded evaluation writes parts; the merge reads them and writes the report the gate reads.
    evaluate = _resolved(steps[native.EVALUATE]["Arguments"], _values(definition))
    merge = _resolved(steps[native.MERGE]["Arguments"], _values(definition))
    assert evaluate["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 2
    assert evaluate["AppSpecification"]["ContainerArguments"] == ["--num-samples", "300"]
    assert {i["InputName"]: i["S3Input"]["S3Uri"] for i in evaluate["ProcessingInputs"]} == {
        **_inputs(),
        "detoxified": PROPERTIES["Steps.Train.ModelArtifacts.S3ModelArtifacts"],
        "training_output": f"{OUTPUT}/{TRAIN_JOB}/output/output.tar.gz",
    }
    assert merge["AppSpecification"]["ContainerArguments"] == ["merge"]
    assert merge["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"] == (
        f"{OUTPUT}/{TRAIN_JOB}/evaluation/report"
    )
    assert steps[native.MERGE]["PropertyFiles"] == [
        {"PropertyFileName": "Report", "OutputName": "report", "FilePath": "report.json"}
    ]
    # The gate: JsonGet on the merged report's verdict.
    gate = steps[native.GATE]["Arguments"]["Conditions"]
    assert [(c["Type"], c["LeftValue"]["Std:JsonGet"]["Path"], c["RightValue"]) for c in gate] == [
        ("LessThan", "verdict.toxicity_diff_ci_high", 0.0),
        ("GreaterThan", "verdict.rouge_l_diff_ci_low", {"Get": "Parameters.MinRougeLDiff"}),
    ]
    assert all(
        c["LeftValue"]["Std:JsonGet"]["PropertyFile"] == {"Get": "Steps.MergeReport.PropertyFiles.Report"}
        for c in gate
    )
    # Caching on the jobs; retries on capacity and throttling.
    for name in (native.TRAIN, native.EVALUATE, native.MERGE):
        assert steps[name]["CacheConfig"] == {"Enabled": True, "ExpireAfter": "P30D"}
        retried = {e for policy in steps[name]["RetryPolicies"] for e in policy["ExceptionType"]}
        assert {"SageMaker.CAPACITY_ERROR", "Step.THROTTLING"} <= retried


def test_a_spot_training_checkpoints_per_execution_and_keeps_no_warm_pool():
    definition = _definition(_spec(spot=True))
    train = _resolved(_steps(definition)[native.TRAIN]["Arguments"], _values(definition))
    assert train["EnableManagedSpotTraining"] is True
    assert train["CheckpointConfig"] == {
        "S3Uri": f"{OUTPUT}/flan-t5-detox/checkpoints/exec-1",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert "KeepAlivePeriodInSeconds" not in train["ResourceConfig"]
    assert service_model_errors("CreateTrainingJob", {**train, "TrainingJobName": TRAIN_JOB}) == ""


def test_registration_is_pending_manual_approval_with_the_report_as_its_metrics():
    definition = _definition(_spec())
    register = _resolved(
        _steps(definition)[f"{native.REGISTER}-RegisterModel"]["Arguments"], _values(definition)
    )
    assert register["ModelApprovalStatus"] == "PendingManualApproval"
    assert register["ModelPackageGroupName"] == "flan-t5-detox"
    assert register["ModelMetrics"]["ModelQuality"]["Statistics"] == {
        "ContentType": "application/json",
        "S3Uri": f"{OUTPUT}/{TRAIN_JOB}/evaluation/report/report.json",
    }
    [container] = register["InferenceSpecification"]["Containers"]
    assert container["Image"] == IMAGE
    assert container["ModelDataUrl"] == PROPERTIES["Steps.Train.ModelArtifacts.S3ModelArtifacts"]


def test_the_fail_step_quotes_the_figures_against_their_thresholds():
    definition = _definition(_spec())
    message = _steps(definition)[native.FAIL]["Arguments"]["ErrorMessage"]["Std:Join"]["Values"]
    read = [v["Std:JsonGet"]["Path"] for v in message if isinstance(v, dict) and "Std:JsonGet" in v]
    assert read == [
        "verdict.toxicity_metric",
        "verdict.toxicity_judge",
        "verdict.toxicity_diff",
        "verdict.toxicity_diff_ci_high",
        "verdict.rouge_l_diff",
        "verdict.rouge_l_diff_ci_low",
        "verdict.sample_size",
    ]
    assert {"Get": "Parameters.MinRougeLDiff"} in message


def test_native_pipeline_defines_and_starts_it_on_the_api(aws, bucket, launch):
    inputs = _inputs(aws)
    code, out, err = launch(
        "pipeline", "--native", "--image", IMAGE, "--role", ROLE, "--bucket", bucket,
        *[arg for name, uri in inputs.items() for arg in ("--" + name.replace("_", "-"), uri)],
        "--hp", "max_ppo_steps=12", "--eval", "num_samples=200", "--keep-alive", "900",
        "--pipeline-name", "detox-test", "--max-rouge-drop", "0.02",
    )  # fmt: skip
    assert code == 0, err
    [created] = aws.api.sent("CreatePipeline")
    assert created["PipelineName"] == "detox-test" and created["RoleArn"] == ROLE
    definition = json.loads(created["PipelineDefinition"])
    parameters = {p["Name"]: p["DefaultValue"] for p in definition["Parameters"]}
    assert parameters["PpoSteps"] == 12 and parameters["MinRougeLDiff"] == -0.02
    train = _steps(definition)[native.TRAIN]["Arguments"]
    assert train["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 900
    [started] = aws.api.sent("StartPipelineExecution")
    assert started["PipelineName"] == "detox-test"
    arn = re.search(r"started execution (\S+)", out).group(1)
    assert arn.startswith(f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:pipeline/detox-test/execution/")
    # moto holds the pipeline as sent.
    stored = aws.sagemaker.describe_pipeline(PipelineName="detox-test")
    assert json.loads(stored["PipelineDefinition"]) == definition

    # Again: the same name updates the pipeline rather than failing.
    code, out, err = launch(
        "pipeline", "--native", "--image", IMAGE, "--role", ROLE, "--bucket", bucket,
        "--peft-checkpoint", inputs["peft_checkpoint"], "--pipeline-name", "detox-test",
    )  # fmt: skip
    assert code == 0, err
    assert len(aws.api.sent("UpdatePipeline")) == 1


def test_the_registration_request_reaches_the_api(aws, bucket):
    """What the pass branch's RegisterModel step asks SageMaker for, sent to moto."""
    definition = _definition(_spec())
    request = _resolved(
        _steps(definition)[f"{native.REGISTER}-RegisterModel"]["Arguments"], _values(definition)
    )
    import boto3

    client = boto3.Session(region_name=REGION).client("sagemaker", endpoint_url=aws.api.url)  # recorded
    client.create_model_package_group(ModelPackageGroupName=request["ModelPackageGroupName"])
    arn = client.create_model_package(**request)["ModelPackageArn"]
    [sent] = aws.api.sent("CreateModelPackage")
    assert {k: v for k, v in sent.items() if k != "ClientToken"} == request  # botocore adds the token
    stored = aws.sagemaker.describe_model_package(ModelPackageName=arn)
    assert stored["ModelApprovalStatus"] == "PendingManualApproval"
    assert stored["ModelPackageGroupName"] == "flan-t5-detox"
    assert stored["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"].endswith(
        "/evaluation/report/report.json"
    )
    # Approving it is one call (README): the registry records it.
    aws.sagemaker.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Approved")
    assert aws.sagemaker.describe_model_package(ModelPackageName=arn)["ModelApprovalStatus"] == "Approved"


def test_dry_run_prints_the_definition_without_aws(launch, monkeypatch):
    """No credentials, no reachable endpoint: any AWS call would fail the command."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**ISOLATION, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}.items():
        monkeypatch.setenv(name, value)
    code, out, err = launch(
        "pipeline", "--native", "--dry-run", "--image", IMAGE, "--role", ROLE, "--bucket", BUCKET,
        "--peft-checkpoint", _inputs()["peft_checkpoint"], "--region", REGION,
    )  # fmt: skip
    assert code == 0, err
    definition = json.loads(out)
    assert [s["Name"] for s in definition["Steps"]] == [native.TRAIN, native.EVALUATE, native.GATE]
    assert definition == _definition(_spec_for_dry_run())


def _spec_for_dry_run() -> native.PipelineSpec:
    options = Options(image=IMAGE, role=ROLE, bucket=BUCKET, peft_checkpoint=_inputs()["peft_checkpoint"])
    return commands.pipeline_spec(options)


def test_bad_pipeline_input_is_refused_before_anything_runs(launch, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    base = ("pipeline", "--native", "--image", IMAGE, "--role", ROLE, "--bucket", BUCKET, "--region", REGION)
    code, _, err = launch(*base, "--dry-run", "--max-rouge-drop", "-0.1")
    assert code == 2 and "--max-rouge-drop must be >= 0" in err
    code, _, err = launch(*base, "--dry-run", "--peft-checkpoint", "./local-folder")
    assert code == 2 and "must be an S3 URI" in err
    code, _, err = launch("pipeline", "--dry-run", "--image", IMAGE, "--role", ROLE, "--bucket", BUCKET)
    assert code == 2 and "add --native" in err


# --- the picture of the graph -----------------------------------------------------------------


def _drawn() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### The pipeline's graph") :]
    return re.search(r"```mermaid\n(.*?)```", section, re.S).group(1)


def test_the_readme_picture_is_the_definition_s_graph():
    """The README draws a two-instance evaluation's definition (on a mismatch, the message is the
    picture to paste)."""
    definition = _definition(_spec(2))
    assert native.drawn_edges(_drawn()) == native.edges(definition), native.mermaid(definition)
    assert _drawn() == native.mermaid(definition), native.mermaid(definition)


def test_the_graph_is_read_from_the_definition():
    one = native.edges(_definition(_spec(1)))
    assert one == {
        (native.TRAIN, native.EVALUATE, ""),
        (native.EVALUATE, native.GATE, ""),
        (native.GATE, f"{native.REGISTER}-RegisterModel", "pass"),
        (native.GATE, native.FAIL, "fail"),
    }
    two = native.edges(_definition(_spec(2)))
    assert two - one == {
        (native.EVALUATE, native.MERGE, ""),
        (native.MERGE, native.GATE, ""),
        (native.TRAIN, native.MERGE, ""),  # the merge writes under the training job's folder
    }
    assert one - two == {(native.EVALUATE, native.GATE, "")}
