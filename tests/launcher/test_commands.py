"""detox_launcher.commands: what the subcommands do end to end: the pipeline, upload, an
evaluation on several instances and its merge job, a dry run's printed command."""

from __future__ import annotations

import re
import shlex
import subprocess

from tests.launcher.account import IMAGE, MODEL_FILES, REPORT_FILES, acts_like_sagemaker, put
from tests.servers import ROLE, JobState


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
