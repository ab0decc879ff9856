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
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
RUNS = ["notebook:ppo", "ours:ppo", "notebook:eval", "ours:eval"]
PHASES = {
    "ppo": [
        "generate",
        "reward",
        "ppo_score",
        "ppo_train_forward",
        "ppo_backward",
        "ppo_optimizer",
        "ppo_other",
    ],
    "eval": ["generate", "reward"],
}
TOTAL = {"ppo": "step", "eval": "total"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--scale", type=float, default=1.0, help="multiplies the token budgets (1.0 = the notebook's)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="PPO batch (the notebook's 16)")
    p.add_argument("--eval-samples", type=int, default=16, help="evaluation prompts (the notebook used 11)")
    p.add_argument("--notebook-dtype", default="bfloat16", help="the notebook loads the model in bf16")
    p.add_argument(
        "--runs",
        default=",".join(RUNS),
        help="contender:phase list; contenders: notebook, notebook_fp32, ours",
    )
    p.add_argument("--seed", type=int, default=0)
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
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- inputs -----------------------------------------------------------------------------------
def make_workload(args, fixtures):
    from flan_t5_detox.ml import data
    from flan_t5_detox.ml.generation import LengthSampler

    from .contenders import Workload
    from .fixtures import BENCH_SAMPLE

    splits = data.prepare_splits(data.read_records(BENCH_SAMPLE), 200, 1000, 0.2)
    low, high = max(2, round(100 * args.scale)), max(3, round(400 * args.scale))
    eval_prompts = [splits.test[i % len(splits.test)].prompt for i in range(args.eval_samples)]
    return Workload(
        base_model=str(fixtures.base_model),
        peft_checkpoint=str(fixtures.peft_checkpoint),
        reward_model=str(fixtures.reward_model),
        train_prompts=[e.prompt for e in splits.train[: args.batch_size]],
        budgets=LengthSampler(low, high, args.seed).sample(args.batch_size),
        eval_prompts=eval_prompts,
        eval_new_tokens=max(2, round(100 * args.scale)),
        seed=args.seed,
        notebook_dtype=args.notebook_dtype,
    )


def machine() -> dict:
    from flan_t5_detox.ml.runtime import cpu_flags

    info = {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0))}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            info["cpu"] = line.split(":", 1)[1].strip()
            break
    info["simd_flags"] = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma")))
    info["contender_env"] = image_env()
    return info


def image_env() -> dict:
    """The job image's glibc malloc settings (Dockerfile ENV), for every contender alike: the
    jobs ship with them, and the notebook's loop gets them too so only the loops differ."""
    from .allocator import TUNED

    return dict(TUNED)


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0]


# -- processes --------------------------------------------------------------------------------
def run_worker(
    name: str, spec: dict, out: Path, env: dict | None = None, timeout: float | None = None
) -> dict:
    """The worker's result; for a worker stopped at `timeout`, {"stopped": ...}: how long its timed
    work had run (a lower bound on its time) and the phases it had finished."""
    from .contenders import PARTIAL_RESULT_ENV

    spec_path, result_path = out / f".{name}.spec.json", out / f".{name}.result.json"
    partial_path = out / f".{name}.partial.json"
    partial_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps(spec))
    cmd = [
        sys.executable,
        "-m",
        "bench.run",
        "--worker",
        name,
        "--spec",
        str(spec_path),
        "--result",
        str(result_path),
    ]
    full_env = {**os.environ, PARTIAL_RESULT_ENV: str(partial_path)}
    for key, value in (env or {}).items():  # None removes a variable
        full_env.pop(key, None) if value is None else full_env.update({key: value})
    load_before = loadavg()
    try:
        subprocess.run(cmd, check=True, cwd=Path(__file__).parent.parent, env=full_env, timeout=timeout)
        result = json.loads(result_path.read_text())
    except subprocess.TimeoutExpired:  # subprocess.run has killed the worker
        partial = json.loads(partial_path.read_text()) if partial_path.exists() else {}
        started = partial.get("started_at")
        result = {
            "stopped": {
                "worker_timeout_s": timeout,
                "timed_work_s": round(time.time() - started, 1) if started else None,
                "finished_phases": partial.get("seconds", {}),
            }
        }
        print(f"{name}: stopped after {timeout:g} s; {json.dumps(result['stopped'])}", flush=True)
    result["loadavg_1min"] = [load_before, loadavg()]
    return result


def worker(args) -> None:
    spec = json.loads(args.spec.read_text())
    if args.worker == "limits":
        import torch

        from .roofline import gemm_gflops, memory_gbps, read_gbps

        torch.set_num_threads(len(os.sched_getaffinity(0)))
        result = {
            "gemm_gflops": gemm_gflops(getattr(torch, spec["dtype"])),
            "memory_gbps": memory_gbps(),
            "read_gbps": read_gbps(),
        }
    else:
        from .contenders import WORKERS, Workload

        result = WORKERS[args.worker](Workload(**spec))
    args.result.write_text(json.dumps(result, indent=2))


LIMITS = ["float32 (MKL default)", "float32", "bfloat16"]


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


def roofline_limits(report: dict) -> dict:
    """The limits the roofline uses: fp32 is measured before and after the contenders (this VM's
    speed drifts by tens of percent over hours), and the better of the two readings counts, so
    no contender is compared against a slow moment of the machine."""
    limits = {name: dict(entry) for name, entry in report["limits"].items()}
    for name, after in report.get("limits_after", {}).items():
        for key in ("peak_gflops", "memory_gbps", "read_gbps"):
            if key in after:
                limits[name][key] = max(limits[name].get(key, 0.0), after[key])
    return limits


# -- report -----------------------------------------------------------------------------------
def summarize(kind: str, result: dict, flops: dict, limits: dict, samples: int) -> dict:
    from .roofline import generation_roofline

    dtype = result["notes"]["dtype"]
    limit = limits["float32" if dtype == "float32" else dtype]
    seconds = result["seconds"]
    counts = result["counts"]
    generated = sum(counts["response_tokens"])
    phases = {}
    for phase in PHASES[kind]:
        # Both contenders run the reward model in fp32 (the pipeline's and RewardModel's default).
        phase_limit = limits["float32"] if phase == "reward" else limit
        roof = flops.get(phase, 0.0) / (phase_limit["peak_gflops"] * 1e9)
        if phase == "generate":  # step by step: each decoder step is bound by FLOPs or bytes
            roof = generation_roofline(
                counts["query_tokens"],
                counts["response_tokens"],
                4 if dtype == "float32" else 2,
                limit["peak_gflops"],
                limit.get("read_gbps", limit["memory_gbps"]),  # reports before read_gbps: copy
                lora=kind == "ppo",  # evaluation runs the merged summarizer
            )
        phases[phase] = {
            "seconds": round(seconds.get(phase, 0.0), 3),
            "gflop": round(flops.get(phase, 0.0) / 1e9, 1),
            "roofline_seconds": round(roof, 3) if roof else None,
            "x_roofline": round(seconds.get(phase, 0.0) / roof, 2) if roof else None,
        }
    total = seconds[TOTAL[kind]]
    return {
        "phases": phases,
        "total_seconds": round(total, 3),
        "roofline_seconds": round(sum(p["roofline_seconds"] or 0 for p in phases.values()), 3),
        "generated_tokens": generated,
        "generate_tokens_per_s": round(generated / seconds["generate"], 2),
        "tokens_per_s": round(generated / total, 2),
        "samples_per_s": round(samples / total, 4),
        "peak_rss_mb": round(result["peak_rss_mb"]),
        "dtype": dtype,
        "loadavg_1min": result["loadavg_1min"],
    }


def _summary(run: str, raw: dict, report: dict) -> dict:
    from .roofline import eval_flops, ppo_step_flops

    if "stopped" in raw:
        return stopped_summary(run.split(":")[1], raw)
    kind, counts, w = run.split(":")[1], raw["counts"], report["workload"]
    count_fn = ppo_step_flops if kind == "ppo" else eval_flops
    flops = count_fn(counts["query_tokens"], counts["response_tokens"], counts["reward_tokens"])
    samples = len(w["budgets"]) if kind == "ppo" else len(w["eval_prompts"])
    return summarize(kind, raw, flops, roofline_limits(report), samples)


def stopped_summary(kind: str, raw: dict) -> dict:
    """A run stopped at --worker-timeout: its finished phases, and a lower bound on its total."""
    finished = raw["stopped"]["finished_phases"]
    return {
        "stopped": raw["stopped"],
        "phases": {
            phase: {
                "seconds": round(finished[phase], 3) if phase in finished else None,
                "gflop": 0.0,
                "roofline_seconds": None,
                "x_roofline": None,
            }
            for phase in PHASES[kind]
        },
        "total_seconds": None,
        "more_than_seconds": raw["stopped"]["timed_work_s"],
        "roofline_seconds": None,
        "loadavg_1min": raw["loadavg_1min"],
        "dtype": "-",
    }


CONTENDERS = ["notebook", "notebook_fp32", "ours"]


def _label(report: dict, contender: str) -> str:
    dtype = "float32" if contender != "notebook" else report["workload"]["notebook_dtype"]
    return {"ours": "ours"}.get(contender, f"notebook loop ({dtype})")


def _table(report: dict, kind: str) -> list[str]:
    rows = {c: report["results"][f"{c}:{kind}"] for c in CONTENDERS if f"{c}:{kind}" in report["results"]}
    ours = rows.get("ours")
    others = [c for c in rows if c != "ours"]
    head = [f"{_label(report, c)} s" for c in rows] + [
        f"speed-up vs {_label(report, c)}" for c in others if ours
    ]
    head += ["GFLOP", "roofline s", "x roofline (" + ", ".join(_label(report, c) for c in rows) + ")"]
    lines = ["| phase | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for phase in PHASES[kind] + ["total"]:
        cells = {c: _cell(r, phase) for c, r in rows.items()}
        values = [_seconds(cells[c]) for c in rows]
        if ours:
            values += [
                _ratio(cells[c]["seconds"], cells["ours"]["seconds"], cells[c]["lower_bound"]) for c in others
            ]
        reference = cells["ours" if ours else others[0]]
        values.append(f"{reference['gflop']:.0f}" if reference["gflop"] else "-")
        values.append(f"{reference['roofline_seconds']:.1f}" if reference["roofline_seconds"] else "-")
        values.append(" / ".join(_ratio(cells[c]["seconds"], cells[c]["roofline_seconds"]) for c in rows))
        lines.append(f"| {phase} | " + " | ".join(values) + " |")
    lines.append("")
    reference = rows.get("ours") or next(iter(rows.values()))
    gflop = sum(p["gflop"] for p in reference["phases"].values())
    if kind == "ppo":
        lines.append(f"- FLOPs of one PPO step: {gflop:.0f} GFLOP.")
    else:
        samples = len(report["workload"]["eval_prompts"])
        lines.append(f"- FLOPs of one evaluation sample: {gflop / samples:.1f} GFLOP ({samples} samples).")
    for c, r in rows.items():
        if "stopped" in r:
            lines.append(
                f"- {_label(report, c)}: **stopped** by --worker-timeout "
                f"{r['stopped']['worker_timeout_s']:g} s (the worker's loading included), "
                f"{r['more_than_seconds']} s into its timed work; "
                "'not reached' marks the phases it had not finished"
            )
            continue
        lines.append(
            f"- {_label(report, c)}: dtype {r['dtype']}; {r['generated_tokens']} generated tokens; "
            f"{r['generate_tokens_per_s']} tokens/s in generation, {r['tokens_per_s']} tokens/s overall; "
            f"{r['samples_per_s']} samples/s; peak RSS {r['peak_rss_mb']} MB; "
            f"load average (1 min) before/after: {' / '.join(r['loadavg_1min'])}"
        )
    return lines + [""]


def _cell(result: dict, phase: str) -> dict:
    """seconds, GFLOP and roofline seconds of one table cell; `lower_bound` for a stopped run's total."""
    if phase == "total":
        stopped = "stopped" in result
        return {
            "seconds": result["more_than_seconds"] if stopped else result["total_seconds"],
            "lower_bound": stopped,
            "gflop": None,
            "roofline_seconds": result["roofline_seconds"],
        }
    return {**result["phases"][phase], "lower_bound": False}


def _seconds(cell: dict) -> str:
    if cell["seconds"] is None:
        return "not reached"
    return f"> {cell['seconds']:.0f}" if cell["lower_bound"] else f"{cell['seconds']:.1f}"


def _ratio(numerator, denominator, lower_bound: bool = False) -> str:
    if not (numerator and denominator):
        return "-"
    return f"{'> ' if lower_bound else ''}{numerator / denominator:.1f}x"


def markdown(report: dict) -> str:
    m, w, limits = report["machine"], report["workload"], report["limits"]
    budgets = w["budgets"]
    peaks = "; ".join(f"{name} {v['peak_gflops']} GFLOP/s" for name, v in limits.items())
    measured = (
        f"Measured before the contenders (best of 10, all CPUs): peak GEMM {peaks}; copy bandwidth "
        f"{limits['float32']['memory_gbps']} GB/s, read bandwidth "
        f"{limits['float32'].get('read_gbps', '-')} GB/s."
    )
    after = report.get("limits_after", {}).get("float32")
    if after:
        used = roofline_limits(report)["float32"]
        measured += (
            f" After them, float32: {after['peak_gflops']} GFLOP/s, copy {after['memory_gbps']} GB/s, "
            f"read {after['read_gbps']} GB/s. The roofline takes the better reading of each "
            f"({used['peak_gflops']} GFLOP/s, read {used['read_gbps']} GB/s)."
        )
    lines = [
        f"# Benchmark {report['started']}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"CPU: {m['cpu']}, {m['cpus']} CPUs, SIMD flags: {' '.join(m['simd_flags'])}",
        "",
        "Every contender ran with the job image's malloc settings: "
        + " ".join(f"`{k}={v}`" for k, v in m.get("contender_env", {}).items()),
        "",
        measured + " Roofline columns use the phase's dtype; generation's roofline is taken per "
        "decoder step (FLOPs at peak or bytes read at the "
        "read bandwidth, whichever is longer).",
        "",
        f"Workload: PPO batch {len(budgets)}, forced new tokens {min(budgets)}..{max(budgets)} "
        f"(sum {sum(budgets)}); evaluation {len(w['eval_prompts'])} samples x {w['eval_new_tokens']} tokens.",
        "",
    ]
    for kind, title in (("ppo", "PPO step"), ("eval", "Evaluation")):
        if any(key.endswith(f":{kind}") for key in report["results"]):
            lines += [f"## {title}", ""] + _table(report, kind)
    return "\n".join(lines)


def save(report: dict, folder: Path, stem: str) -> None:
    """JSON, Markdown and the roofline figure (PNG) of a report, side by side."""
    from .figure import roofline_png

    (folder / f"{stem}.json").write_text(json.dumps(report, indent=2))
    labels = {c: _label(report, c) for c in CONTENDERS}
    (folder / f"{stem}.png").write_bytes(roofline_png(report, labels, PHASES))
    (folder / f"{stem}.md").write_text(markdown(report) + f"\n![roofline]({stem}.png)\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.rerender:
        report = json.loads(args.rerender.read_text())
        for run, raw in report["raw"].items():
            report["results"][run] = _summary(run, raw, report)
        save(report, args.rerender.parent, args.rerender.name.removesuffix(".json"))
        print(markdown(report))
        return 0
    from . import fixtures

    args.out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    workload = make_workload(args, fixtures.build(args.out / "fixtures", args.seed))
    report = {
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
    print(json.dumps(report["limits"], indent=1), flush=True)
    stem = f"bench-{started.replace(':', '')}-scale{args.scale:g}"
    for run in args.runs.split(","):
        contender, kind = run.split(":")
        spec = dataclasses.asdict(workload)
        if contender == "notebook_fp32":  # the notebook's loop in fp32 with ours' MKL kernels
            spec["notebook_dtype"] = "float32"
        name = f"{contender.split('_')[0]}_{kind}"
        raw = run_worker(name, spec, args.out, image_env(), args.worker_timeout)
        report["raw"][run] = raw
        report["results"][run] = _summary(run, raw, report)
        print(run, json.dumps(report["results"][run]), flush=True)
        # Written after every run: a long last run does not hold the others' results hostage.
        save(report, args.out, stem)
    if not args.limits_from:
        report["limits_after"] = measure_limits(args.out, ["float32"])
        print(json.dumps(report["limits_after"], indent=1), flush=True)
        for run, raw in report["raw"].items():
            report["results"][run] = _summary(run, raw, report)
        save(report, args.out, stem)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
