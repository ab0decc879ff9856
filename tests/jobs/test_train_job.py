"""The train entrypoint as SageMaker runs it: a real process against an /opt/ml-like folder."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from flan_t5_detox.contract.metrics import metric_definitions
from flan_t5_detox.ml import checkpoint
from tests.helpers import Payload, plant_payload, read_events
from tests.servers import ISOLATION, aws_env, s3_test_client

TRAIN = [sys.executable, "-m", "detox_entrypoints.train"]


def _run(root, timeout=300):
    return subprocess.run([*TRAIN, "--ml-root", str(root)], capture_output=True, text=True, timeout=timeout)


def test_end_to_end_run_writes_every_output(train_layout, tiny_models):
    # Held-out evaluation at steps 0, 2 and 3 (the last), every adapter kept, the best in model/.
    root = train_layout(max_ppo_steps=3, eval_every=2, eval_samples=8, keep_best=True, save_adapter_every=1)
    started = time.perf_counter()
    result = _run(root)
    print(f"tiny end-to-end train job: {time.perf_counter() - started:.1f}s")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (root / "output" / "failure").exists()

    model_dir = root / "model"
    for name in (
        "adapter_config.json",
        "adapter_model.bin",
        "value_head.bin",
        "tokenizer.json",
        "README.md",
        "adapter_info.json",
    ):
        assert (model_dir / name).is_file(), name
    assert not list(root.glob(".staging-*"))

    lines = [json.loads(x) for x in (root / "output" / "data" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    for key in (
        "reward_mean",
        "reward_std",
        "kl",
        "returns_mean",
        "advantages_mean",
        "time_generate",
        "time_ppo",
    ):
        assert key in lines[0]
    assert abs(lines[0]["kl"]) < 1e-4  # reference == starting policy
    summary = json.loads((root / "output" / "data" / "training_summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 3

    # Every shipped metric definition scrapes the job's own log.
    for definition in metric_definitions():
        assert re.search(definition["Regex"], result.stdout), definition["Name"]
    assert re.search(
        r"\[metrics\] step=3 .* \| step 3 of 3, [0-9.e+-]+ s each, about 0:00:00 left", result.stdout
    )

    # TensorBoard's own reader finds every step, and every held-out evaluation.
    scalars = read_events(root / "output" / "tensorboard")
    assert [e.step for e in scalars["ppo/reward_mean"]] == [1, 2, 3]
    assert [e.value for e in scalars["ppo/kl"]] == pytest.approx([x["kl"] for x in lines])
    assert [e.step for e in scalars["heldout/toxicity"]] == [0, 2, 3]
    assert [e.step for e in scalars["time/step"]] == [1, 2, 3]
    assert scalars["heldout/kl"][0].value == 0.0  # step 0 is the starting summarizer itself

    # keep_best: model/ is the chosen step's adapter, adapter_info.json says which and why, and the
    # last step's adapter is in steps/.
    chosen = json.loads((model_dir / "adapter_info.json").read_text())["chosen"]
    assert chosen["step"] in (2, 3) and chosen["last_step"] == 3 and "lowest held-out" in chosen["rule"]
    assert chosen["figures"]["heldout_toxicity"] == lines[chosen["step"] - 1]["heldout_toxicity"]
    assert sorted(p.name for p in (model_dir / "steps").iterdir()) == ["1", "2", "3"]
    kept = torch.load(model_dir / "steps" / str(chosen["step"]) / "adapter_model.bin", weights_only=True)
    published = torch.load(model_dir / "adapter_model.bin", weights_only=True)
    assert all(torch.equal(kept[k], published[k]) for k in kept)

    # Load the adapter the documented way and generate.
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_models.base_model)
    model = PeftModel.from_pretrained(base, str(model_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    out = model.generate(**tokenizer(["Summarize: Tom buys a coat."], return_tensors="pt"), max_new_tokens=6)
    assert out.shape[0] == 1 and out.shape[1] > 1


def test_a_restart_with_settings_of_another_run_fails_before_any_model_loads_and_a_longer_run_goes_on(
    train_layout,
):
    root = train_layout(max_ppo_steps=2)
    assert _run(root).returncode == 0
    hyperparameters = root / "input" / "config" / "hyperparameters.json"
    original = json.loads(hyperparameters.read_text())
    hyperparameters.write_text(json.dumps({**original, "batch_size": "16", "max_ppo_steps": "3"}))
    result = _run(root)
    failure = _bad_input(result, root)
    assert "batch_size was 8, now 16" in failure and "Set it back to continue that run" in failure
    assert "max_ppo_steps" in failure.split("A resume may change only")[1]  # listed as changeable
    assert "train_prompts=" not in result.stdout + result.stderr  # not even the data was read

    (root / "output" / "failure").unlink()
    hyperparameters.write_text(json.dumps({**original, "max_ppo_steps": "3"}))
    resumed = _run(root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming step-000002 with a changed setting: max_ppo_steps 2 -> 3" in resumed.stdout
    assert [x["step"] for x in _metrics(root)] == [1, 2, 3]


def test_adapters_kept_along_the_way_are_loadable_peft_adapters(train_layout, tiny_models):
    root = train_layout(max_ppo_steps=4, save_adapter_every=2, learning_rate=3e-3)
    result = _run(root)
    assert result.returncode == 0, result.stderr[-2000:]
    kept = sorted(p.name for p in (root / "model" / "steps").iterdir())
    assert kept == ["2", "4"]
    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    enc = tokenizer(["Summarize: Tom buys a coat."], return_tensors="pt")
    decoder = torch.tensor([[0, 5, 6, 7]])
    logits = {}
    for name in (*kept, "final"):
        folder = root / "model" / ("." if name == "final" else f"steps/{name}")
        info = json.loads((folder / "adapter_info.json").read_text())
        assert info["ppo_steps"] == (4 if name == "final" else int(name))
        base = AutoModelForSeq2SeqLM.from_pretrained(tiny_models.base_model)
        with torch.no_grad():
            logits[name] = (
                PeftModel.from_pretrained(base, str(folder)).eval()(**enc, decoder_input_ids=decoder).logits
            )
    torch.testing.assert_close(logits["4"], logits["final"])  # step 4 is the end: the same adapter
    assert not torch.allclose(logits["2"], logits["4"])  # step 2 is an earlier one


def test_bad_hyperparameter_fails_before_loading_models(train_layout, tmp_path):
    root = train_layout(batch_size=10, mini_batch_size=4)
    result = _run(root, timeout=120)
    assert result.returncode != 0
    failure = (root / "output" / "failure").read_text()
    assert "divisible by mini_batch_size" in failure
    assert "Traceback" not in result.stderr
    assert not any((root / "model").iterdir())


def test_missing_inputs_are_reported(train_layout):
    root = train_layout()
    shutil.rmtree(root / "input" / "data" / "peft_checkpoint")
    result = _run(root, timeout=120)
    assert result.returncode != 0
    assert "peft_checkpoint_s3_uri" in (root / "output" / "failure").read_text()


def test_sigterm_checkpoints_and_a_restart_resumes_to_the_same_result(train_layout, tmp_path):
    settings = dict(max_ppo_steps=12, checkpoint_every=0, output_min_length=16, output_max_length=48)
    root = train_layout(**settings)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [*TRAIN, "--ml-root", str(root)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    metrics = root / "output" / "data" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert time.time() - sent < 120
    assert proc.returncode == 143, output[-2000:]
    stopped_at = checkpoint.latest(root / "checkpoints").step
    assert 3 <= stopped_at < 12  # written by the SIGTERM path (checkpoint_every=0)
    assert not any((root / "model").iterdir())  # no half-written model

    resumed = _run(root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from checkpoint at step {stopped_at}" in resumed.stdout
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 13))

    # Same data order and RNG: an uninterrupted run gives the same figures.
    straight = train_layout("uninterrupted", **settings)
    assert _run(straight).returncode == 0
    reference = [
        json.loads(x) for x in (straight / "output" / "data" / "metrics.jsonl").read_text().splitlines()
    ]
    # Same seed, data order and RNG state: the stopped-and-resumed run is the uninterrupted one.
    figures = ("reward_mean", "kl", "kl_coef", "policy_loss", "value_loss", "response_length_mean")
    assert [[x[k] for k in figures] for x in lines] == [[x[k] for k in figures] for x in reference]
    assert torch.load(
        root / "model" / "adapter_model.bin", weights_only=True
    )  # the resumed run saved a model


def test_peft_checkpoint_is_pulled_from_s3(train_layout, tiny_models, s3_server):
    """No peft_checkpoint channel: the job downloads the adapter from `peft_checkpoint_s3_uri`."""
    client = s3_test_client(s3_server.url)
    client.create_bucket(Bucket="detox-inputs")
    for path in tiny_models.peft_checkpoint.iterdir():
        client.upload_file(str(path), "detox-inputs", f"models/peft/{path.name}")
    root = train_layout(max_ppo_steps=1, peft_checkpoint_s3_uri="s3://detox-inputs/models/peft/")
    shutil.rmtree(root / "input" / "data" / "peft_checkpoint")
    scratch = root.parent / "tmp"
    scratch.mkdir()
    env = {
        **os.environ,
        **ISOLATION,
        **aws_env(s3_server.url, "http://127.0.0.1:9"),  # S3 only; nothing else is called
        "TMPDIR": str(scratch),
    }
    result = subprocess.run(
        [*TRAIN, "--ml-root", str(root)], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (root / "model" / "adapter_model.bin").is_file()
    assert list(scratch.iterdir()) == []  # the downloaded adapter does not outlive the job

    missing = train_layout("missing", max_ppo_steps=1, peft_checkpoint_s3_uri="s3://detox-inputs/nothing/")
    shutil.rmtree(missing / "input" / "data" / "peft_checkpoint")
    result = subprocess.run(
        [*TRAIN, "--ml-root", str(missing)], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode != 0
    assert "s3://detox-inputs/nothing/" in (missing / "output" / "failure").read_text()


def _metrics(root):
    return [json.loads(x) for x in (root / "output" / "data" / "metrics.jsonl").read_text().splitlines()]


def _bad_input(result, root):
    """The job failed as bad input: exit 2, one `Bad input:` reason, no traceback anywhere."""
    failure = (root / "output" / "failure").read_text()
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert failure.startswith("Bad input: ") and "Traceback" not in failure + result.stderr
    return failure


def test_a_payload_in_a_model_channel_never_runs_and_fails_the_job(train_layout, tmp_path):
    marker = tmp_path / "ran"
    for channel in ("base_model", "reward_model"):
        root = train_layout(channel)
        plant_payload(root / "input" / "data" / channel, marker)
        failure = _bad_input(_run(root), root)
        assert "objects other than tensors" in failure and channel in failure
        assert "weights_only" not in failure
        assert not marker.exists()


def test_a_restart_with_only_the_checkpoints_loses_nothing(train_layout):
    """Killed (SIGKILL, no chance to clean up) after a checkpointed step; then, as on a spot
    replacement, only checkpoints/ comes back: the history comes from the checkpoint."""
    root = train_layout(max_ppo_steps=6)
    proc = subprocess.Popen(
        [*TRAIN, "--ml-root", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while checkpoint_steps(root) < 2:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=60)
    killed_at = checkpoint.latest(root / "checkpoints").step
    assert 2 <= killed_at < 6
    before_kill = _metrics(root)[:killed_at]
    shutil.rmtree(root / "output")
    shutil.rmtree(root / "model")
    resumed = _run(root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from checkpoint at step {killed_at}" in resumed.stdout
    lines = _metrics(root)
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[:killed_at] == before_kill
    summary = json.loads((root / "output" / "data" / "training_summary.json").read_text())
    assert summary["steps"] == 6 and summary["final"]["step"] == 6
    assert summary["reward_mean_first"] == before_kill[0]["reward_mean"]


def checkpoint_steps(root) -> int:
    """The newest checkpoint's step, 0 before the first (read from its folder name)."""
    folders = sorted((root / "checkpoints").glob(f"{checkpoint.PREFIX}*"))
    return int(folders[-1].name.removeprefix(checkpoint.PREFIX)) if folders else 0


def test_a_torn_metrics_line_and_a_damaged_checkpoint_are_skipped_with_warnings(train_layout):
    root = train_layout(max_ppo_steps=2)
    assert _run(root).returncode == 0
    with (root / "output" / "data" / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 3, "reward_me')  # a kill in the middle of a line
    newest = root / "checkpoints" / "step-000002" / checkpoint.STATE_FILE
    newest.write_bytes(newest.read_bytes()[:100])
    hyperparameters = root / "input" / "config" / "hyperparameters.json"
    hyperparameters.write_text(json.dumps({**json.loads(hyperparameters.read_text()), "max_ppo_steps": "3"}))
    resumed = _run(root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"skipping checkpoint {newest.parent}: it is damaged" in resumed.stdout
    assert "resumed from checkpoint at step 1" in resumed.stdout
    assert [x["step"] for x in _metrics(root)] == [1, 2, 3]  # step 2 redone, the torn line gone


def test_when_no_checkpoint_is_usable_the_job_fails_instead_of_starting_over(train_layout):
    root = train_layout(max_ppo_steps=2)
    assert _run(root).returncode == 0
    for state in (root / "checkpoints").glob(f"step-*/{checkpoint.STATE_FILE}"):
        torch.save({"meta": "x", "tensors": {}, "code": Payload(root / "ran")}, state)
    failure = _bad_input(_run(root), root)
    assert "no checkpoint in" in failure and "Delete them to train from step 0" in failure
    assert "step-000002: it holds objects other than tensors" in failure
    assert not (root / "ran").exists()


def test_an_unwritable_model_folder_fails_before_any_model_loads(train_layout):
    root = train_layout()
    shutil.rmtree(root / "model")
    (root / "model").write_text("a file where the model folder should be")
    started = time.perf_counter()
    result = _run(root)
    failure = _bad_input(result, root)
    assert "the model folder" in failure and str(root / "model") in failure
    assert "[metrics]" not in result.stdout  # nothing was trained
    assert not list(root.glob(".staging-*")) and not list(root.glob(".write-check-*"))
    print(f"failed after {time.perf_counter() - started:.1f}s")
