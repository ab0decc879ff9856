"""The evaluate entrypoint as SageMaker runs it, on /opt/ml-like folders and a real train job's output."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

import pytest
import torch
from detox_entrypoints import evaluate, train

from flan_t5_detox.contract.cluster import free_port
from flan_t5_detox.contract.hosts import host_names
from flan_t5_detox.contract.layout import write_processing_layout, write_training_layout
from flan_t5_detox.ml import report
from tests.ml.test_evaluation import one_thread  # noqa: F401 - the same autouse fixture here

EVALUATE = [sys.executable, "-m", "detox_entrypoints.evaluate"]
SETTINGS = ["--num-samples", "12", "--max-new-tokens", "16", "--generation-batch-size", "6"]
SETTINGS += [
    "--bootstrap-samples",
    "500",
    "--dtype",
    "float32",
    "--num-threads",
    "1",
    "--samples-per-prompt",
    "3",
]
# The names themselves are checked in tests/ml/report/test_writer.py; here: the job writes them all.
REPORT_FILES = {
    report.REPORT_JSON,
    report.COMPARISONS_CSV,
    report.TRADEOFF_CSV,
    report.REPORT_HTML,
    *report.PLOT_FILES,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_models, sample_dataset):
    """A real (short) train job's /opt/ml folder: model/ (with the adapters of steps 1 and 2 kept in
    model/steps/) and output/data/."""
    root = write_training_layout(
        tmp_path_factory.mktemp("train") / "ml",
        tiny_models.channels(sample_dataset),
        {
            "max_ppo_steps": 3,
            "batch_size": 8,
            "learning_rate": 3e-3,
            "output_min_length": 8,
            "num_threads": 1,
            "save_adapter_every": 1,
        },
    )
    assert train.main(["--ml-root", str(root)]) == 0
    return root


def _inputs(tiny_models, sample_dataset, trained, **overrides):
    inputs = {
        **tiny_models.evaluation_inputs(sample_dataset),
        "detoxified": trained / "model",
        "training_output": trained / "output" / "data",
    }
    inputs.update(overrides)
    return {name: path for name, path in inputs.items() if path is not None}


def _tarball(folder, dest, name):
    """As SageMaker packs /opt/ml/model and /opt/ml/output/data: the folder's contents at the archive root."""
    dest.mkdir(parents=True)
    with tarfile.open(dest / name, "w:gz") as archive:
        archive.add(folder, arcname=".")
    return dest


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, tiny_models, sample_dataset, trained):
    """One real process, folder inputs, settings as ContainerArguments and one from the environment."""
    root = write_processing_layout(
        tmp_path_factory.mktemp("eval") / "ml", _inputs(tiny_models, sample_dataset, trained)
    )
    env = dict(
        os.environ, DETOX_EVAL_SEED="7", DETOX_EVAL_NUM_SAMPLES="3"
    )  # the argument must win over the latter
    result = subprocess.run(
        [*EVALUATE, "evaluate", "--ml-root", str(root), *SETTINGS],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    return root, result


def test_folder_inputs_give_a_full_report(folder_run):
    root, result = folder_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not (root / "output" / "failure").exists() and not (root / "output" / "message").exists()
    out = root / "processing" / "output" / "report"
    assert {p.name for p in out.iterdir()} == REPORT_FILES
    assert not list((root / "processing" / "output").rglob(".report-staging-*"))

    data = json.loads((out / "report.json").read_text())
    assert data["sample_size"] == 12 and data["settings"]["num_samples"] == 12
    assert data["settings"]["seed"] == 7  # from DETOX_EVAL_SEED
    assert data["settings"]["max_new_tokens"] == 16
    assert all(m["n"] == 12 for m in data["metrics"].values())
    assert data["training"]["step"] == [1, 2, 3]
    # The trade-off curve: the start, both kept steps and the final adapter, on the same prompts.
    curve = data["tradeoff"]
    assert [p["step"] for p in curve] == [0, 1, 2, 3]
    assert [p["kl"] for p in curve[1:]] == pytest.approx(data["training"]["kl"])
    assert curve[0]["toxicity_change"]["mean_diff"] == 0
    assert curve[-1]["toxicity_change"]["mean_diff"] == pytest.approx(
        data["metrics"]["response_toxicity"]["mean_diff"]
    )
    assert all(p["toxicity"]["ci_low"] <= p["toxicity"]["mean"] <= p["toxicity"]["ci_high"] for p in curve)
    assert data["models"]["after_adapter"]["info"]["ppo_steps"] == 3
    assert "adapter_model.bin" in data["models"]["after_adapter"]["sha256"]
    speed = data["throughput"]
    assert speed["samples"] == 12 and speed["samples_per_second"] > 0
    assert "samples/s" in result.stdout  # logged too
    assert (
        len((out / "comparisons.csv").read_text().strip().splitlines()) > 12
    )  # header + 12 (multi-line) rows
    print(f"tiny evaluate job: {speed['samples_per_second']:.2f} samples/s")


def test_model_tar_gz_inputs_give_the_same_numbers(
    tmp_path, tiny_models, sample_dataset, trained, folder_run, monkeypatch
):
    """model.tar.gz and output.tar.gz, as SageMaker writes them, instead of the folders."""
    inputs = _inputs(
        tiny_models,
        sample_dataset,
        trained,
        detoxified=_tarball(trained / "model", tmp_path / "model-s3", "model.tar.gz"),
        training_output=_tarball(trained / "output" / "data", tmp_path / "output-s3", "output.tar.gz"),
    )
    root = write_processing_layout(tmp_path / "ml", inputs)
    assert (root / "processing" / "input" / "detoxified" / "model.tar.gz").is_file()
    monkeypatch.setenv("DETOX_EVAL_SEED", "7")
    assert evaluate.main(["--ml-root", str(root), *SETTINGS]) == 0
    out = root / "processing" / "output" / "report"
    assert {p.name for p in out.iterdir()} == REPORT_FILES
    tarball = json.loads((out / "report.json").read_text())
    folder = json.loads((folder_run[0] / "processing" / "output" / "report" / "report.json").read_text())
    assert tarball["models"]["after_adapter"]["sha256"] == folder["models"]["after_adapter"]["sha256"]
    assert tarball["models"]["after_adapter"]["location"].endswith("processing/input/detoxified")
    assert tarball["training"] == folder["training"]
    for name, metric in tarball["metrics"].items():
        assert metric["after"]["mean"] == pytest.approx(folder["metrics"][name]["after"]["mean"], abs=1e-6)


def _misfit_adapter(source, dest):
    """The trained adapter with its LoRA A matrices cut to another model's hidden size."""
    dest.mkdir()
    for item in source.iterdir():
        if item.is_file():  # the adapter itself; the kept steps stay out
            (dest / item.name).write_bytes(item.read_bytes())
    weights = torch.load(source / "adapter_model.bin", weights_only=True)
    weights = {k: (v[:, :16] if "lora_A" in k else v) for k, v in weights.items()}
    torch.save(weights, dest / "adapter_model.bin")
    return dest


def _unlabelled_reward_model(source, dest):
    dest.mkdir()
    for item in source.iterdir():
        (dest / item.name).write_bytes(item.read_bytes())
    config = json.loads((dest / "config.json").read_text())
    config["id2label"] = {"0": "LABEL_0", "1": "LABEL_1"}
    config["label2id"] = {"LABEL_0": 0, "LABEL_1": 1}
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def _short_dialogues(dest):
    dest.mkdir()
    rows = [{"id": str(i), "dialogue": "#Person1#: Hi.", "summary": "Hi.", "topic": "t"} for i in range(20)]
    (dest / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dest


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_detoxified", "missing input 'detoxified'"),
        ("misfit_adapter", "does not fit the base model"),
        ("empty_test_split", "only 0 dialogue(s)"),
        ("reward_model_without_label", "has no label 'nothate'"),
        ("bad_setting", "num_samples must be >= 0"),
        ("unknown_argument", "did you mean '--num-samples'"),
    ],
)
def test_bad_input_fails_clearly_and_writes_no_report(
    case, expected, tmp_path, tiny_models, sample_dataset, trained, capsys
):
    overrides, args = {}, list(SETTINGS)
    if case == "missing_detoxified":
        overrides["detoxified"] = None
    elif case == "misfit_adapter":
        overrides["detoxified"] = _misfit_adapter(trained / "model", tmp_path / "misfit")
    elif case == "empty_test_split":
        overrides["dataset"] = _short_dialogues(tmp_path / "short")
    elif case == "reward_model_without_label":
        overrides["reward_model"] = _unlabelled_reward_model(tiny_models.reward_model, tmp_path / "rm")
    elif case == "bad_setting":
        args += ["--num-samples", "-1"]
    elif case == "unknown_argument":
        args += ["--num-sample", "5"]
    root = write_processing_layout(
        tmp_path / "ml", _inputs(tiny_models, sample_dataset, trained, **overrides)
    )

    code = evaluate.main(["evaluate", "--ml-root", str(root), *args])

    assert code == 2  # bad input
    for name in ("message", "failure"):
        text = (root / "output" / name).read_text()
        assert expected in text and text.startswith("Bad input:") and "Traceback" not in text
    assert expected in capsys.readouterr().err
    output = root / "processing" / "output"
    assert list((output / "report").iterdir()) == []
    assert [p.name for p in output.iterdir()] == ["report"]  # no staging folder left behind


def test_a_damaged_adapter_in_a_tarball_is_named_as_the_user_gave_it(
    tmp_path, tiny_models, sample_dataset, trained
):
    model = tmp_path / "model"
    shutil.copytree(trained / "model", model)
    weights = model / "adapter_model.bin"
    weights.write_bytes(weights.read_bytes()[:200])
    inputs = _inputs(
        tiny_models,
        sample_dataset,
        trained,
        detoxified=_tarball(model, tmp_path / "model-s3", "model.tar.gz"),
    )
    root = write_processing_layout(tmp_path / "ml", inputs)
    assert evaluate.main(["--ml-root", str(root), *SETTINGS]) == 2
    failure = (root / "output" / "failure").read_text()
    given = root / "processing" / "input" / "detoxified"
    assert failure.startswith(
        f"Bad input: the adapter's weights file {given} (unpacked)/adapter_model.bin is damaged"
    )
    assert "detox-evaluate-" not in failure  # the scratch folder it was unpacked into


@pytest.mark.parametrize(
    "hosts, sizes", [(2, [6, 6]), (3, [0, 6, 6])], ids=["2 hosts", "3 hosts, one without a batch"]
)
def test_shards_merged_give_the_one_host_report(tmp_path, tiny_models, sample_dataset, trained, hosts, sizes):
    """Processing hosts each measure whole generation batches of the dialogues (SETTINGS: 12 in
    batches of 6); `evaluate merge` builds the report, and it is the one-host report, row for row
    and figure for figure."""
    inputs = _inputs(tiny_models, sample_dataset, trained)
    single = write_processing_layout(tmp_path / "single", inputs)
    assert evaluate.main(["--ml-root", str(single), *SETTINGS]) == 0

    parts = tmp_path / "parts"
    parts.mkdir()
    names = host_names(hosts)
    for host in names:
        root = write_processing_layout(tmp_path / host, inputs)
        (root / "config" / "resourceconfig.json").write_text(
            json.dumps({"current_host": host, "hosts": names[::-1]})  # the job sorts them
        )
        assert evaluate.main(["--ml-root", str(root), *SETTINGS]) == 0
        written = sorted(p.name for p in (root / "processing" / "output" / "report").iterdir())
        assert written == [f"part-{host}.json"]  # a part, named for its host; no report yet
        shutil.copy(root / "processing" / "output" / "report" / written[0], parts)
    assert [len(json.loads(p.read_text())["positions"]) for p in sorted(parts.iterdir())] == sizes

    merged = write_processing_layout(tmp_path / "merge", {"parts": parts})
    assert evaluate.main(["merge", "--ml-root", str(merged)]) == 0
    one, two = (root / "processing" / "output" / "report" for root in (single, merged))
    assert {p.name for p in two.iterdir()} == REPORT_FILES
    for name in (report.COMPARISONS_CSV, report.TRADEOFF_CSV):
        assert (two / name).read_text() == (one / name).read_text(), name
    a, b = (json.loads((folder / report.REPORT_JSON).read_text()) for folder in (one, two))
    for key in (
        "metrics",
        "field_figures",
        "diversity",
        "slices",
        "verdict",
        "tradeoff",
        "toxicity_relative_improvement",
        "sample_size",
        "test_split_size",
        "settings",
    ):
        assert b[key] == a[key], key
    assert {k: m["sha256"] for k, m in b["models"].items()} == {
        k: m["sha256"] for k, m in a["models"].items()
    }


def _host_layouts(tmp_path, inputs, names):
    """One processing layout per host, each told it is its host of `names`."""
    roots = {}
    for host in names:
        roots[host] = write_processing_layout(tmp_path / host, inputs)
        (roots[host] / "config" / "resourceconfig.json").write_text(
            json.dumps({"current_host": host, "hosts": names})
        )
    return roots


def _part(root):
    return sorted((root / "processing" / "output" / "report").glob("part-*.json"))


def test_a_host_that_waits_for_hosts_stays_until_every_part_is_written(
    tmp_path, tiny_models, sample_dataset, trained
):
    """`wait_for_hosts`: algo-2, done first, stays until algo-1 has written its part too (the SDK's
    local mode stops every container when the first one exits); then both exit, having met."""
    roots = _host_layouts(tmp_path, _inputs(tiny_models, sample_dataset, trained), host_names(2))
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    command = [*EVALUATE, *SETTINGS, "--wait-for-hosts", "300", "--ml-root"]
    logs = {host: tmp_path / f"{host}.log" for host in roots}
    with logs["algo-2"].open("w") as log:
        second = subprocess.Popen(
            [*command, str(roots["algo-2"])], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 300
        while not _part(roots["algo-2"]) and second.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _part(roots["algo-2"]), logs["algo-2"].read_text()
        time.sleep(3)
        assert second.poll() is None, logs["algo-2"].read_text()  # its part written, it waits
        with logs["algo-1"].open("w") as log:
            first = subprocess.run(
                [*command, str(roots["algo-1"])], env=env, stdout=log, stderr=subprocess.STDOUT, timeout=300
            )
        assert first.returncode == 0, logs["algo-1"].read_text()
        assert second.wait(timeout=120) == 0, logs["algo-2"].read_text()
    finally:
        second.kill()
    for host, root in roots.items():
        assert [p.name for p in _part(root)] == [f"part-{host}.json"]
        assert "all 2 hosts have written their parts" in logs[host].read_text()


def test_a_host_whose_peers_never_come_stops_waiting_and_keeps_its_part(
    tmp_path, tiny_models, sample_dataset, trained
):
    roots = _host_layouts(tmp_path, _inputs(tiny_models, sample_dataset, trained), host_names(2))
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    command = [*EVALUATE, *SETTINGS, "--wait-for-hosts", "2", "--ml-root", str(roots["algo-1"])]
    done = subprocess.run(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout
    assert [p.name for p in _part(roots["algo-1"])] == ["part-algo-1.json"]
    assert "the hosts did not all meet: rank 0 of 2: the ranks did not all meet" in done.stdout


def test_merge_refuses_parts_that_do_not_cover_the_sample(tmp_path, tiny_models, sample_dataset, trained):
    root = write_processing_layout(tmp_path / "host", _inputs(tiny_models, sample_dataset, trained))
    (root / "config" / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]})
    )
    assert evaluate.main(["--ml-root", str(root), *SETTINGS]) == 0
    merged = write_processing_layout(tmp_path / "merge", {"parts": root / "processing" / "output" / "report"})
    assert evaluate.main(["merge", "--ml-root", str(merged)]) == 2
    failure = (merged / "output" / "failure").read_text()
    assert "cover 6 dialogue(s) of the 12 sampled, not each once: a host's part is missing" in failure
