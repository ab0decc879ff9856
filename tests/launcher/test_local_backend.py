"""detox_launcher.local_backend: the same jobs on this machine, under Docker or as plain processes:
their /opt/ml layouts, their runs, and the environment a plain process gets."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from flan_t5_detox.contract.environment import ProcessingJobEnvironment, TrainingJobEnvironment
from tests.launcher.account import MODEL_FILES, put, tarball


def local_and_s3_inputs(aws, tmp_path) -> tuple[Path, Path, Path, list]:
    """A local folder, a local file and an S3 folder as a train job's inputs: the work folder, the
    two local paths, and the arguments that name all of them."""
    base = tmp_path / "base_model"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "t5"}')
    dataset = tmp_path / "dialogsum.jsonl"
    dataset.write_text('{"id": "1"}\n')
    peft = put(aws, "local/peft/adapter_config.json", b'{"r": 32}')
    root = tmp_path / "ml"
    common = ["--work-dir", root, "--base-model", base, "--dataset", dataset]
    return root, base, dataset, [*common, "--peft-checkpoint", peft.rsplit("/", 1)[0]]


def test_local_layout_from_local_paths_and_s3(aws, bucket, launch, tmp_path, monkeypatch):
    root, base, dataset, common = local_and_s3_inputs(aws, tmp_path)
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


def test_local_docker_layout_mounts_the_local_inputs(aws, bucket, launch, tmp_path):
    root, base, dataset, common = local_and_s3_inputs(aws, tmp_path)
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
    from detox_launcher.local_backend import image_environment, process_environment

    launcher = {"PATH": "/bin", "HOME": "/home/me", "AWS_REGION": "eu-west-1", "HF_HUB_OFFLINE": "1"}
    launcher |= {"DETOX_EVAL_NUM_SAMPLES": "2", "DETOX_IMAGE": "x", "SECRET_TOKEN": "s"}
    env = process_environment({"DETOX_EVAL_SEED": "7"}, launcher)
    assert env == {
        "PATH": "/bin", "HOME": "/home/me", "AWS_REGION": "eu-west-1", "HF_HUB_OFFLINE": "1",
        **image_environment(),  # the image's whole environment (container/job.env), which holds:
        "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "DETOX_EVAL_SEED": "7",
    }  # fmt: skip


# The job process of a plain-process run, standing in for detox-train/detox-evaluate: it writes the
# environment it was started with into its work folder.
ENV_PROBE = "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))"


@pytest.mark.parametrize(("kind", "hosts"), [("train", 1), ("train", 2), ("evaluate", 1), ("evaluate", 2)])
def test_a_plain_process_job_sees_the_images_whole_environment(launch, tmp_path, monkeypatch, kind, hosts):
    """Every variable of container/job.env reaches each job process of a --no-docker run (each
    host's, and the merge job's), as in the image; the job's own --env wins, the shell's does not."""
    from detox_launcher import local_backend

    owned = local_backend.read_env_file(local_backend.IMAGE_ENV_FILE)
    assert any(name.startswith("MALLOC_") for name in owned)  # read by glibc at process start
    monkeypatch.setattr(
        local_backend,
        "process_command",
        lambda run: [sys.executable, "-c", ENV_PROBE, str(run.root / "seen-env.json")],
    )
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")  # left in the launcher's shell
    model = tmp_path / "model"
    model.mkdir()
    inputs = ["--base-model", model] if kind == "train" else ["--detoxified", model]
    code, out, err = launch(
        "local", kind, "--no-docker", "--work-dir", tmp_path / "ml", "--instance-count", hosts, *inputs,
        "--env", "MALLOC_TOP_PAD_=1",
    )  # fmt: skip
    assert code == 0, err
    seen = [json.loads(p.read_text()) for p in sorted((tmp_path / "ml").rglob("seen-env.json"))]
    assert len(seen) == hosts + (kind == "evaluate" and hosts > 1)  # a sharded evaluation's merge job
    for env in seen:
        assert {name: env.get(name) for name in owned} == {**owned, "MALLOC_TOP_PAD_": "1"}


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
def test_local_docker_train_then_evaluate(launch, tmp_path, tiny_models, sample_dataset, image):
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
    two_hosts = ["local", "evaluate", "--no-docker", "--instance-count", "2", *common]
    code, out, err = launch(*two_hosts, "--work-dir", tmp_path / "waits", "--eval", "wait_for_hosts=60")
    assert code == 2 and "wait_for_hosts: here the hosts run in turn" in err, err
    assert not (tmp_path / "waits").exists()  # refused before any host ran
    code, out, err = launch(*two_hosts, "--work-dir", tmp_path / "two")
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


def test_a_local_job_killed_outright_is_reported_as_most_likely_out_of_memory(tmp_path):
    """A SIGKILL (the OOM killer's) writes no failure file; the job's running marker says it."""
    from detox_launcher.local_backend import LocalRun

    from flan_t5_detox.contract.memory import marker_path
    from flan_t5_detox.contract.paths import MlPaths

    paths = MlPaths(tmp_path / "ml")
    run = LocalRun("train", "detox-train-x", paths, [])
    assert run.failure == ""
    paths.checkpoints.mkdir(parents=True)
    marker = {"started": "2026-12-06T19:00:00+0000", "pid": 1, "settings": {"batch_size": 64}, "ended": False}
    marker_path(paths.checkpoints).write_text(json.dumps(marker))
    assert "most likely killed for memory" in run.failure and "batch_size=64" in run.failure
    marker_path(paths.checkpoints).write_text(json.dumps({**marker, "ended": True}))
    assert run.failure == ""
