"""The real SageMaker SDK's local mode (`instance_type="local"`, docker compose) against the job
image, as an outside check of the contract: training and a sharded evaluation on two containers.
The image and the engine come from `.ci/docker.sh` (tests/container/engine.py)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import tarfile
import uuid
from pathlib import Path

import pytest

from tests.container.sdk import compose_cleaned, sdk_local_session

pytestmark = pytest.mark.docker


def test_sagemaker_sdk_local_mode_trains_on_two_containers(image, tiny_models, sample_dataset, tmp_path):
    """The real SDK (`instance_type="local"`, docker compose) as an outside check of the contract,
    with `instance_count=2`: two containers on the SDK's compose network, whose resource configs
    name both hosts, train data-parallel (rank 0 on the first host writes model/ and output/)."""
    from sagemaker.estimator import Estimator

    session = sdk_local_session(tmp_path)
    dataset_dir = tmp_path / "dataset"
    dataset_dir.mkdir()
    shutil.copy(sample_dataset, dataset_dir)
    estimator = Estimator(
        image_uri=image,
        role="arn:aws:iam::111111111111:role/detox-local",
        instance_count=2,
        instance_type="local",
        output_path=f"file://{tmp_path / 'artifacts'}",
        hyperparameters={
            "max_ppo_steps": 1,
            "batch_size": 8,
            "mini_batch_size": 4,
            "output_min_length": 8,
            "output_max_length": 16,
            "dtype": "float32",
            "num_threads": 1,
            "collective_timeout": 120,
        },
        environment={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        sagemaker_session=session,
    )
    channels = tiny_models.channels(dataset_dir)
    with compose_cleaned():
        estimator.fit({name: f"file://{path}" for name, path in channels.items()}, wait=True)

    model_tar = Path(estimator.model_data.removeprefix("file://"))
    with tarfile.open(model_tar) as archive:
        names = set(archive.getnames())
    assert {"adapter_config.json", "adapter_model.bin", "adapter_info.json"} <= names, names
    with tarfile.open(model_tar.parent / "output.tar.gz") as archive:
        metrics = archive.extractfile("data/metrics.jsonl").read().decode().splitlines()
        summary = json.loads(archive.extractfile("data/training_summary.json").read())
    assert [json.loads(x)["step"] for x in metrics] == [1]
    assert summary["world_size"] == 2  # both containers' ranks trained the one model


def _processor(session, image: str, count: int):
    """The evaluate job as the SDK's Processor: ContainerEntrypoint ["evaluate"], hub offline."""
    from sagemaker.processing import Processor

    return Processor(
        role="arn:aws:iam::111111111111:role/detox-local",
        image_uri=image,
        instance_count=count,
        instance_type="local",
        entrypoint=["evaluate"],
        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        sagemaker_session=session,
    )


def _report_output(bucket: str, prefix: str) -> list:
    from sagemaker.processing import ProcessingOutput

    return [
        ProcessingOutput(
            source="/opt/ml/processing/output/report",
            destination=f"s3://{bucket}/{prefix}",
            output_name="report",
        )
    ]


def _uploaded_inputs(client, bucket: str, sources: dict[str, Path]) -> list:
    """Each source uploaded under s3://bucket/inputs/<name>, as the processing input <name>."""
    from sagemaker.processing import ProcessingInput

    from flan_t5_detox.contract import s3

    for name, source in sources.items():
        s3.upload(source, f"s3://{bucket}/inputs/{name}" + ("/" if source.is_file() else ""), client)
    return [
        ProcessingInput(
            source=f"s3://{bucket}/inputs/{name}",
            destination=f"/opt/ml/processing/input/{name}",
            input_name=name,
        )
        for name in sources
    ]


def test_sagemaker_sdk_local_mode_shards_the_evaluation_on_two_containers_then_merges(
    image, train_layout, tiny_models, sample_dataset, s3_server, tmp_path
):
    """The SDK's local processing with `instance_count=2` (inputs and outputs through the test's
    S3 server): each container writes its own part, waiting for the other's (`wait_for_hosts`),
    and a one-container merge job builds the report from both."""
    from detox_entrypoints import train
    from sagemaker.processing import ProcessingInput

    from tests.servers import s3_test_client

    trained = train_layout("train", max_ppo_steps=1)
    assert train.main(["--ml-root", str(trained)]) == 0
    client = s3_test_client(s3_server.url)
    bucket = f"detox-sdk-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    sources = {**tiny_models.evaluation_inputs(Path(sample_dataset)), "detoxified": trained / "model"}
    inputs = _uploaded_inputs(client, bucket, sources)
    session = sdk_local_session(tmp_path, s3_server.url)
    settings = ["--num-samples", "8", "--generation-batch-size", "4", "--max-new-tokens", "12"]
    settings += ["--bootstrap-samples", "200", "--num-threads", "1", "--samples-per-prompt", "2"]
    settings += ["--wait-for-hosts", "600"]  # compose stops both containers when the first exits
    with compose_cleaned():
        _processor(session, image, 2).run(
            inputs=inputs,
            outputs=_report_output(bucket, "sharded"),
            arguments=settings,
            wait=True,
            logs=False,
        )
    parts = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="sharded/")["Contents"])
    assert len(parts) == 2 and all(re.fullmatch(r"sharded/part-algo-[12]-\w+\.json", p) for p in parts), parts

    merge_input = ProcessingInput(
        source=f"s3://{bucket}/sharded", destination="/opt/ml/processing/input/parts", input_name="parts"
    )
    with compose_cleaned():
        _processor(session, image, 1).run(
            inputs=[merge_input], outputs=_report_output(bucket, "merged"), arguments=["merge"], wait=True,
            logs=False,
        )  # fmt: skip
    report = json.loads(client.get_object(Bucket=bucket, Key="merged/report.json")["Body"].read())
    assert report["sample_size"] == 8 and report["samples_per_prompt"] == 2
    assert report["judged"] and report["models"]["judge_model"]["sha256"]  # the judge came through S3
    rows = client.get_object(Bucket=bucket, Key="merged/comparisons.csv")["Body"].read().decode()
    assert len(list(csv.DictReader(rows.splitlines()))) == 8  # every dialogue, from both hosts' parts
