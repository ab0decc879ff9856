"""The offline demo, run exactly as the README shows it: one command, train then evaluate, a report."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from detox_entrypoints import demo

DEMO = Path(sys.executable).parent / "detox-demo"  # the installed console script


def test_demo_command_runs_train_then_evaluate_and_prints_the_report(tmp_path):
    out = tmp_path / "demo-output"
    started = time.perf_counter()
    result = subprocess.run([str(DEMO), "--out", str(out)], capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(f"detox-demo wall time: {wall:.1f}s")

    report_line = [line for line in result.stdout.splitlines() if line.startswith("[demo] report: ")]
    assert len(report_line) == 1
    page = Path(report_line[0].removeprefix("[demo] report: "))
    assert page.is_file() and page.name == "report.html"
    report_dir = page.parent
    assert report_dir == out.resolve() / "evaluate" / "processing" / "output" / "report"
    for name in (
        "report.json",
        "comparisons.csv",
        "tradeoff.csv",
        "toxicity_distribution.png",
        "training_curves.png",
        "tradeoff.png",
    ):
        assert (report_dir / name).is_file(), name

    # The real jobs ran: the train job's model/ and metrics, the evaluate job on that model.
    train_root = out / "train"
    assert (train_root / "model" / "adapter_model.bin").is_file()
    metrics = (train_root / "output" / "data" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in metrics]
    assert steps == list(range(1, 11))  # the default --steps
    data = json.loads((report_dir / "report.json").read_text())
    assert data["sample_size"] == data["test_split_size"] == 37  # the whole test split of the shipped sample
    assert data["models"]["after_adapter"]["info"]["ppo_steps"] == 10
    assert data["training"]["step"] == steps
    # The trade-off curve: the start, the adapters kept every 2 steps, and the final one.
    assert [point["step"] for point in data["tradeoff"]] == [0, 2, 4, 6, 8, 10]
    assert sorted(p.name for p in (train_root / "model" / "steps").iterdir()) == ["10", "2", "4", "6", "8"]
    assert "[metrics] step=10" in result.stdout
    assert not (out / "train" / "output" / "failure").exists()
    assert not (out / "evaluate" / "output" / "failure").exists()


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="not made by detox-demo"):
        demo.main(["--out", str(tmp_path)])
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_demo_clears_its_own_earlier_output(tmp_path):
    out = tmp_path / "demo"
    demo.prepare_out(out)
    (out / "train").mkdir()
    (out / "train" / "stale-checkpoint").write_text("x")
    demo.prepare_out(out)  # a rerun starts fresh instead of resuming an old train job
    assert sorted(p.name for p in out.iterdir()) == [demo.MARKER]
