"""Peak memory of the jobs, measured against the memory preflight's estimate.

    python -m bench.memory                     # every case, one job at a time
    python -m bench.memory --cases tiny-train,real-train-b8
    python -m bench.memory --rerender bench/results/memory-....json   # the estimates again

Each case runs a whole job (`detox-train` for one PPO step, or `detox-evaluate`) as a process of
its own with the job image's environment (its glibc malloc settings keep freed memory, so the
peak is the job's high-water mark), and reads the process's peak resident set size from the
kernel (`wait4`'s `ru_maxrss`). Beside it stands what `flan_t5_detox.contract.machine` estimates
for the same models and settings. The real-size cases use the real flan-t5-base and roberta-base
architectures built by `bench.fixtures` (random weights), the tiny ones the embedded default.
Results go to bench/results/memory-<date>.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from detox_launcher.local_backend import image_environment

from flan_t5_detox.contract.layout import write_processing_layout, write_training_layout
from flan_t5_detox.contract.settings import EvalConfig, TrainConfig, parse_settings

from .common import BENCH_SAMPLE, RESULTS, command_line, embedded_channels, machine


@dataclass
class Case:
    job: str  # "train" or "evaluate"
    scale: str  # "tiny" (the embedded default) or "real" (bench.fixtures)
    settings: dict = field(default_factory=dict)


DEMO_TRAIN = {"batch_size": 32, "mini_batch_size": 8, "output_min_length": 40, "output_max_length": 60}
CASES = {
    "tiny-train": Case("train", "tiny", {**DEMO_TRAIN, "dtype": "float32", "num_threads": 1}),
    "tiny-evaluate": Case("evaluate", "tiny", {"dtype": "float32", "num_threads": 1, "num_samples": 320}),
    "real-train-b8": Case(
        "train",
        "real",
        {"batch_size": 8, "mini_batch_size": 4, "output_min_length": 50, "output_max_length": 150},
    ),
    "real-train-b16": Case(
        "train",
        "real",
        {"batch_size": 16, "mini_batch_size": 8, "output_min_length": 50, "output_max_length": 150},
    ),
    "real-train-notebook": Case("train", "real", {"batch_size": 16, "mini_batch_size": 4}),
    "real-evaluate-g8": Case(
        "evaluate", "real", {"num_samples": 16, "generation_batch_size": 8, "max_new_tokens": 100}
    ),
    "real-evaluate-g16": Case(
        "evaluate", "real", {"num_samples": 16, "generation_batch_size": 16, "max_new_tokens": 100}
    ),
}


def channels(scale: str) -> dict[str, Path]:
    if scale == "tiny":
        return embedded_channels()
    from . import fixtures

    built = fixtures.build(RESULTS / "fixtures")
    return {
        "base_model": built.base_model,
        "peft_checkpoint": built.peft_checkpoint,
        "reward_model": built.reward_model,
        "dataset": BENCH_SAMPLE,
    }


@dataclass
class Usage:
    peak_rss_mb: float  # from the kernel's accounting of the process
    code: int
    seconds: float
    cpu_seconds: float


def run_measured(command: list[str], env: dict[str, str], log: Path) -> Usage:
    """Run `command` to its end: its peak resident set, exit code, wall and CPU seconds."""
    started = time.perf_counter()
    with log.open("w") as out:
        job = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(job.pid, 0)
    return Usage(
        usage.ru_maxrss / 1024,
        os.waitstatus_to_exitcode(status),
        time.perf_counter() - started,
        usage.ru_utime + usage.ru_stime,
    )


def run_case(name: str, case: Case, work: Path, trained: dict[str, Path]) -> dict:
    inputs = channels(case.scale)
    env = {**os.environ, **image_environment(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if case.job == "train":
        root = write_training_layout(work / name, inputs, {**case.settings, "max_ppo_steps": 1}, how="link")
        command = [sys.executable, "-m", "detox_entrypoints.train", "--ml-root", str(root)]
        trained[case.scale] = root / "model"
    else:
        processing = {
            "base_model": inputs["base_model"],
            "peft_checkpoint": inputs["peft_checkpoint"],
            "detoxified": trained[case.scale],
            "dataset": inputs["dataset"],
            "reward_model": inputs["reward_model"],
        }
        root = write_processing_layout(work / name, processing, how="link")
        args = [f"--{k.replace('_', '-')}={v}" for k, v in case.settings.items()]
        command = [
            sys.executable,
            "-m",
            "detox_entrypoints.evaluate",
            "evaluate",
            "--ml-root",
            str(root),
            *args,
        ]
    usage = run_measured(command, env, work / f"{name}.log")
    if usage.code != 0:
        raise SystemExit(f"{name}: the job failed (exit {usage.code}); see {work / (name + '.log')}")
    return {
        "case": name,
        "peak_rss_mb": round(usage.peak_rss_mb, 1),
        "seconds": round(usage.seconds, 1),
        "cpu_seconds": round(usage.cpu_seconds, 1),
        "dtype_bytes": dtype_bytes(case),
    }


def dtype_bytes(case: Case) -> int:
    """Bytes per weight of the summarizers the job runs with on this machine."""
    import torch

    from flan_t5_detox.ml.runtime import pick_dtype

    return torch.empty((), dtype=pick_dtype(case.settings.get("dtype", "auto"))).element_size()


def estimate_mb(name: str, dtype_bytes: int) -> float:
    from flan_t5_detox.contract.memory import estimate_memory

    case = CASES[name]
    inputs = channels(case.scale)
    if case.job == "train":
        config = parse_settings(TrainConfig, {**case.settings, "max_ppo_steps": 1})
    else:
        config = parse_settings(EvalConfig, case.settings)
    from flan_t5_detox.ml import data

    splits = data.load_splits(inputs["dataset"], config)
    prompts = splits.train if case.job == "train" else splits.test
    longest = max(len(example.prompt) for example in prompts)
    figures = estimate_memory(
        config, inputs["base_model"], inputs["peft_checkpoint"], inputs["reward_model"], dtype_bytes, longest
    )
    return figures.total / 2**20


def render(report: dict) -> str:
    lines = [
        "| case | settings | measured peak RSS, MB | estimate, MB | estimate / measured | job s |",
        "|---|---|---|---|---|---|",
    ]
    for result in report["results"]:
        name = result["case"]
        estimate = estimate_mb(name, result["dtype_bytes"])
        ratio = estimate / result["peak_rss_mb"]
        shown = ", ".join(f"{k}={v}" for k, v in CASES[name].settings.items())
        lines.append(
            f"| {name} | {shown} | {result['peak_rss_mb']:.0f} | {estimate:.0f} | {ratio:.2f} "
            f"| {result['seconds']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = command_line("memory", __doc__)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument(
        "--rerender", type=Path, help="a saved report: print its table with today's estimates"
    )
    args = parser.parse_args(argv)
    if args.rerender:
        print(render(json.loads(args.rerender.read_text())))
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    out = RESULTS / f"memory-{started.replace(':', '')}.json"
    report = {
        "started": started,
        "machine": machine(),
        "results": [],
    }
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    trained: dict[str, Path] = {}
    for name in args.cases.split(","):
        result = run_case(name, CASES[name], work, trained)
        report["results"].append(result)
        print(json.dumps(result), flush=True)
        out.write_text(json.dumps(report, indent=2))
    print(render(report))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
