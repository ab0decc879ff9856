"""The native pipeline run for real: the SDK's LocalPipelineSession runs its Training, Processing,
Condition and Fail steps on the CI image under local Docker, on the embedded default, with every
input and output on the tests' S3 server. Once through the gate's pass branch, once through its
fail branch. (Registration cannot run locally: test_sagemaker_pipeline.py sends its request.)"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest
from detox_entrypoints.demo import TRAIN_HYPERPARAMETERS
from detox_launcher import commands
from detox_launcher import sagemaker_pipeline as native
from detox_launcher.options import Options

from flan_t5_detox.contract import s3
from tests.container.sdk import compose_cleaned, sdk_local_session
from tests.servers import ROLE, s3_test_client

pytestmark = [pytest.mark.docker, pytest.mark.slow]

EVALUATE = {
    "num_samples": 96,
    "max_new_tokens": 60,
    "generation_batch_size": 32,
    "bootstrap_samples": 2000,
    "dtype": "float32",
    "num_threads": 1,
}
PASS_STEPS = 8
FAIL_STEPS = 1


@pytest.fixture(scope="module")
def local_pipeline(image, tiny_models, sample_dataset, s3_server, tmp_path_factory):
    """The pipeline, defined from launcher Options as `pipeline --native` defines it, on a
    LocalPipelineSession; its inputs uploaded to a fresh bucket."""
    client = s3_test_client(s3_server.url)
    bucket = f"detox-pipeline-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    inputs = {}
    for name, source in tiny_models.evaluation_inputs(Path(sample_dataset)).items():  # the judge too
        inputs[name] = f"s3://{bucket}/inputs/{name}/"
        s3.upload(Path(source), inputs[name], client)
    options = Options(
        image=image,
        role=ROLE,
        bucket=bucket,
        instance_type="local",
        hyperparameters=dict(TRAIN_HYPERPARAMETERS),  # sized for the tiny models, as in the demo
        evaluate=dict(EVALUATE),
        environment={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        pipeline_name=f"detox-local-{uuid.uuid4().hex[:6]}",
        **inputs,
    )
    spec = commands.pipeline_spec(options)
    session = sdk_local_session(tmp_path_factory.mktemp("pipeline"), s3_server.url, pipeline=True)
    pipeline = native.build(spec, session, local=True)
    pipeline.create(role_arn=ROLE)
    return pipeline, client, bucket


def _run(pipeline, **parameters):
    started = time.monotonic()
    with compose_cleaned():
        execution = pipeline.start(parameters=parameters)
    elapsed = time.monotonic() - started
    steps = {step["StepName"]: step for step in execution.list_steps()["PipelineExecutionSteps"]}
    print(f"[pipeline] {parameters}: {execution.describe()['PipelineExecutionStatus']} in {elapsed:.0f} s")
    return execution, steps


def _report(client, bucket: str, steps: dict) -> dict:
    """report.json of the execution, where the pipeline has the evaluation write it: under the
    training job's folder."""
    train_job = steps[native.TRAIN]["Metadata"]["TrainingJob"]["Arn"]  # local mode: the job's name
    key = f"flan-t5-detox/{train_job}/evaluation/report/report.json"
    return json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def _statuses(steps: dict) -> dict[str, str]:
    return {name: step["StepStatus"] for name, step in steps.items()}


def test_the_gate_passes_a_detoxified_adapter(local_pipeline):
    pipeline, client, bucket = local_pipeline
    # Any ROUGE-L change is accepted here: this run asks whether the detoxification is significant.
    execution, steps = _run(pipeline, PpoSteps=PASS_STEPS, MinRougeLDiff=-1.0)
    assert execution.describe()["PipelineExecutionStatus"] == "Succeeded", execution.describe()
    assert _statuses(steps) == {
        native.TRAIN: "Succeeded",
        native.EVALUATE: "Succeeded",
        native.GATE: "Succeeded",
    }
    assert steps[native.GATE]["Metadata"]["Condition"]["Outcome"] is True
    report = _report(client, bucket, steps)
    print(f"[pipeline] pass branch verdict: {report['verdict']}")
    assert report["verdict"]["toxicity_judge"] == "judge"  # the gate read the judge's figure
    assert report["verdict"]["toxicity_diff_ci_high"] < 0
    assert report["verdict"]["sample_size"] == EVALUATE["num_samples"]
    assert report["training_summary"]["steps"] == PASS_STEPS  # the PpoSteps parameter reached the train job


def test_the_gate_fails_with_the_figures_quoted(local_pipeline):
    pipeline, client, bucket = local_pipeline
    # A ROUGE-L difference above +1 is impossible (ROUGE-L lies in [0, 1]): no run meets this gate.
    execution, steps = _run(pipeline, PpoSteps=FAIL_STEPS, MinRougeLDiff=1.0)
    described = execution.describe()
    assert described["PipelineExecutionStatus"] == "Failed", described
    assert _statuses(steps) == {
        native.TRAIN: "Succeeded",
        native.EVALUATE: "Succeeded",
        native.GATE: "Succeeded",
        native.FAIL: "Failed",
    }
    assert steps[native.GATE]["Metadata"]["Condition"]["Outcome"] is False
    message = steps[native.FAIL]["FailureReason"]
    assert described["FailureReason"].endswith(message)
    print(f"[pipeline] fail branch message: {message}")
    verdict = _report(client, bucket, steps)["verdict"]
    figures = re.search(
        r"CI high (\S+) \(must be < 0\); ROUGE-L difference (\S+), 95% CI low (\S+) \(must be > 1.0\); "
        r"(\d+) test dialogues",
        message,
    )
    assert figures, message
    assert float(figures.group(1)) == pytest.approx(verdict["toxicity_diff_ci_high"])
    assert float(figures.group(3)) == pytest.approx(verdict["rouge_l_diff_ci_low"])
    assert int(figures.group(4)) == verdict["sample_size"]
    assert verdict["toxicity_metric"] in message and verdict["toxicity_judge"] in message
