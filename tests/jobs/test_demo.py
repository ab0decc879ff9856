"""The offline demo, run exactly as the README shows it: one command, train then evaluate, a report."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from detox_entrypoints import demo

from flan_t5_detox.ml.heldout import BestRule

DEMO = Path(sys.executable).parent / "detox-demo"  # the installed console script


@pytest.mark.numerics
def test_demo_command_runs_train_then_evaluate_and_proves_the_effect(tmp_path):
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
        "max_toxicity_distribution.png",
        "fluency_diversity.png",
        "training_curves.png",
        "tradeoff.png",
    ):
        assert (report_dir / name).is_file(), name

    # The real jobs ran: the train job's model/ and metrics, the evaluate job on that model.
    train_root = out / "train"
    assert (train_root / "model" / "adapter_model.bin").is_file()
    metrics = [
        json.loads(line)
        for line in (train_root / "output" / "data" / "metrics.jsonl").read_text().splitlines()
    ]
    steps = [m["step"] for m in metrics]
    assert steps == list(range(1, 21))  # the default --steps
    data = json.loads((report_dir / "report.json").read_text())
    assert data["sample_size"] == data["test_split_size"] >= 300  # the whole test split of the shipped sample

    # keep_best: model/ holds the step the rule chose from the held-out evaluations (steps 0, 4,
    # ..., 20 on prompts held out of the training split), and the demo says which and why.
    chosen = json.loads((train_root / "model" / "adapter_info.json").read_text())["chosen"]
    evaluated = [m for m in metrics if "heldout_toxicity" in m]
    assert [m["step"] for m in evaluated] == [4, 8, 12, 16, 20] and chosen["last_step"] == 20
    rule = BestRule(max_rouge_drop=0.02, toxicity="response_toxicity")
    assert chosen["rule"] == rule.statement()
    assert rule.choose(metrics, chosen["start"])["step"] == chosen["step"]
    toxicity_then = chosen["figures"]["heldout_toxicity"]
    kept_line = f"[demo] kept step {chosen['step']} of 20: held-out toxicity {toxicity_then:.3f}"
    assert kept_line in result.stdout and chosen["rule"] in result.stdout
    assert data["models"]["after_adapter"]["info"]["ppo_steps"] == chosen["step"]
    assert data["training"]["step"] == steps
    assert not (out / "train" / "output" / "failure").exists()
    assert not (out / "evaluate" / "output" / "failure").exists()

    # The effect, on the toxicity the demo trained on (the response's): significant, and the
    # summaries' quality kept.
    assert data["reward_input"] == "response" and data["headline_metric"] == "response_toxicity"
    toxicity = data["metrics"]["response_toxicity"]
    # The paired t-test: the test of the mean difference, whose CI is asserted next. (The Wilcoxon
    # signed-rank test asks whether the typical dialogue changed; most had no insult to drop.)
    assert toxicity["t_p"] < 0.01
    assert toxicity["ci_high"] < 0  # the CI of the mean difference excludes 0
    assert data["metrics"]["rougeL"]["ci_low"] > -0.05
    # The reward curve rises: the last five steps' mean reward above the first five's.
    rewards = [m["reward_mean"] for m in metrics]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5

    # The field's evaluation: k samples per prompt, judged by a classifier PPO never saw.
    assert data["samples_per_prompt"] == 4 and data["judged"]
    judge = data["metrics"]["judge_response_toxicity"]
    assert judge["n"] == data["sample_size"]
    assert judge["t_p"] < 0.01 and judge["ci_high"] < 0  # the judge sees the detoxification too
    assert data["reward_hack_suspected"] is False and data["verdict"]["toxicity_judge"] == "judge"
    for who in ("response_toxicity", "judge_response_toxicity"):
        assert data["metrics"][who + "_probability"]["ci_high"] < 0  # fewer prompts with a toxic sample
        assert data["metrics"][who + "_max"]["ci_high"] < 0  # and a lower expected maximum
    # The price, within the README's bounds: perplexity under the starting summarizer at most 1.25x
    # (the demo measures about 1.02x), distinct-2 over all samples at least 0.8x (about 1.02x).
    perplexity = data["metrics"]["perplexity"]
    assert perplexity["after"]["mean"] <= 1.25 * perplexity["before"]["mean"]
    distinct_2 = {side: data["diversity"][side]["distinct"]["2"] for side in ("before", "after")}
    assert distinct_2["after"] >= 0.8 * distinct_2["before"]
    # The toxic slice: where the starting summaries were toxic, each slice with its n.
    toxic, clean = data["slices"]
    assert (toxic["name"], clean["name"]) == ("toxic", "clean")
    assert toxic["n"] + clean["n"] == data["sample_size"] and toxic["n"] >= 20
    assert toxic["comparisons"]["judge_response_toxicity"]["ci_high"] < 0

    # The trade-off curve: the start and the adapters kept every 4 steps, the last one included;
    # its point at the kept step is the evaluation's "after".
    assert [point["step"] for point in data["tradeoff"]] == [0, 4, 8, 12, 16, 20]
    assert sorted(int(p.name) for p in (train_root / "model" / "steps").iterdir()) == [4, 8, 12, 16, 20]
    kept = next(point for point in data["tradeoff"] if point["step"] == chosen["step"])
    assert kept["toxicity"]["mean"] == pytest.approx(toxicity["after"]["mean"])
    assert "[metrics] step=20" in result.stdout


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
