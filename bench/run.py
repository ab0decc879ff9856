"""Benchmark: the notebook's PPO step and evaluation loop against the project's, on flan-t5-base and
roberta-base architectures (random weights), with a roofline of each phase.

    python -m bench.run --scale 0.1          # quick
    python -m bench.run                      # full: batch 16, 100..400 new tokens, 100 for evaluation

Each contender/phase runs in its own process (clean peak RSS, no shared caches). Results go to
bench/results/ as JSON and Markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from . import report as reports
from .common import RESULTS, Sizes, command_line, image_malloc_settings, machine, make_workload, run_worker

RUNS = ["notebook:ppo", "ours:ppo", "notebook:eval", "ours:eval"]
LIMITS = ["float32 (MKL default)", "float32", "bfloat16"]


def parse_args(argv=None) -> argparse.Namespace:
    p = command_line("run", __doc__)
    p.add_argument(
        "--scale", type=float, default=Sizes.scale, help="multiplies the token budgets (1.0 = the notebook's)"
    )
    p.add_argument("--batch-size", type=int, default=Sizes.batch_size, help="PPO batch (the notebook's 16)")
    p.add_argument(
        "--eval-samples",
        type=int,
        default=Sizes.eval_samples,
        help="evaluation prompts (the notebook used 11)",
    )
    p.add_argument(
        "--notebook-dtype", default=Sizes.notebook_dtype, help="the notebook loads the model in bf16"
    )
    p.add_argument(
        "--runs",
        default=",".join(RUNS),
        help="contender:phase list; contenders: " + ", ".join(reports.CONTENDERS),
    )
    p.add_argument("--seed", type=int, default=Sizes.seed)
    p.add_argument(
        "--limits-from", type=Path, help="reuse the machine limits of an earlier report (quick runs)"
    )
    p.add_argument(
        "--worker-timeout",
        type=float,
        help="stop a run after this many seconds and report a lower bound (the notebook's bf16 PPO "
        "step takes hours where bf16 is emulated)",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--rerender", type=Path, help="recompute the summary and Markdown of a saved report JSON")
    return p.parse_args(argv)


def measure_limits(out: Path, names=LIMITS) -> dict:
    """GEMM rates and bandwidth per dtype; fp32 both with MKL's default dispatch and with the
    kernels ours picks."""
    from flan_t5_detox.ml.runtime import mkl_cpu_type

    settings = {
        "float32 (MKL default)": ({"dtype": "float32"}, {"MKL_DEBUG_CPU_TYPE": None}),
        "float32": ({"dtype": "float32"}, {"MKL_DEBUG_CPU_TYPE": mkl_cpu_type()}),
        "bfloat16": ({"dtype": "bfloat16"}, {}),
    }
    limits = {}
    for name in names:
        spec, env = settings[name]
        limits[name] = run_worker("limits", spec, out, env)
    for entry in limits.values():
        entry["peak_gflops"] = max(entry["gemm_gflops"].values())
    return limits


def rerender(path: Path) -> None:
    report = json.loads(path.read_text())
    reports.resummarize(report)
    reports.save(report, path.parent, path.name.removesuffix(".json"))
    print(reports.markdown(report))


def new_report(args, argv, started: str, workload) -> dict:
    return {
        "started": started,
        "command": " ".join(["python -m bench.run"] + (argv if argv is not None else sys.argv[1:])),
        "machine": machine(),
        "workload": dataclasses.asdict(workload),
        "limits": json.loads(args.limits_from.read_text())["limits"]
        if args.limits_from
        else measure_limits(args.out),
        "results": {},
        "raw": {},
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rerender:
        rerender(args.rerender)
        return 0
    from . import fixtures

    args.out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    sizes = Sizes(args.scale, args.batch_size, args.eval_samples, args.seed, args.notebook_dtype)
    workload = make_workload(fixtures.build(args.out / "fixtures", args.seed), sizes)
    report = new_report(args, argv, started, workload)
    print(json.dumps(report["limits"], indent=1), flush=True)
    stem = f"bench-{started.replace(':', '')}-scale{args.scale:g}"
    for run in args.runs.split(","):
        contender, kind = run.split(":")
        spec = dataclasses.asdict(workload)
        if contender == "notebook_fp32":  # the notebook's loop in fp32 with ours' MKL kernels
            spec["notebook_dtype"] = "float32"
        name = f"{contender.split('_')[0]}_{kind}"
        raw = run_worker(name, spec, args.out, image_malloc_settings(), args.worker_timeout)
        report["raw"][run] = raw
        report["results"][run] = reports.run_summary(run, raw, report)
        print(run, json.dumps(report["results"][run]), flush=True)
        # Written after every run: a long last run does not hold the others' results hostage.
        reports.save(report, args.out, stem)
    if not args.limits_from:
        report["limits_after"] = measure_limits(args.out, ["float32"])
        print(json.dumps(report["limits_after"], indent=1), flush=True)
        reports.resummarize(report)
        reports.save(report, args.out, stem)
    print(reports.markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
