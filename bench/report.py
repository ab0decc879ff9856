"""A benchmark report (`python -m bench.run`): each run's raw result summarized against the
roofline, the Markdown tables, and the files saved side by side (JSON, Markdown, PNG).

A report is plain JSON: "limits" (and "limits_after"), "workload", "machine", "raw" (each run's
worker result) and "results" (their summaries, recomputed from "raw" at any time).
"""

from __future__ import annotations

import json
from pathlib import Path

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
CONTENDERS = ["notebook", "notebook_fp32", "ours"]


def roofline_limits(report: dict) -> dict:
    """The limits the roofline uses: fp32 is measured before and after the contenders (a VM's
    speed can drift between the two), and the better of the two readings counts, so no contender
    is compared against a slow moment of the machine."""
    limits = {name: dict(entry) for name, entry in report["limits"].items()}
    for name, after in report.get("limits_after", {}).items():
        for key in ("peak_gflops", "memory_gbps", "read_gbps"):
            if key in after:
                limits[name][key] = max(limits[name].get(key, 0.0), after[key])
    return limits


# -- summaries --------------------------------------------------------------------------------
def _phase_roofline(kind: str, phase: str, flops: dict, counts: dict, dtype: str, limits: dict) -> float:
    from .roofline import generation_roofline

    limit = limits["float32" if dtype == "float32" else dtype]
    if phase == "generate":  # step by step: each decoder step is bound by FLOPs or bytes
        return generation_roofline(
            counts["query_tokens"],
            counts["response_tokens"],
            4 if dtype == "float32" else 2,
            limit["peak_gflops"],
            limit.get("read_gbps", limit["memory_gbps"]),  # reports before read_gbps: copy
            lora=kind == "ppo",  # evaluation runs the merged summarizer
        )
    # Both contenders run the reward model in fp32 (the pipeline's and RewardModel's default).
    phase_limit = limits["float32"] if phase == "reward" else limit
    return flops.get(phase, 0.0) / (phase_limit["peak_gflops"] * 1e9)


def summarize(kind: str, result: dict, flops: dict, limits: dict, samples: int) -> dict:
    dtype = result["notes"]["dtype"]
    seconds = result["seconds"]
    generated = sum(result["counts"]["response_tokens"])
    phases = {}
    for phase in PHASES[kind]:
        roof = _phase_roofline(kind, phase, flops, result["counts"], dtype, limits)
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


def run_summary(run: str, raw: dict, report: dict) -> dict:
    """The summary of run `contender:kind` from its worker's raw result."""
    from .roofline import eval_flops, ppo_step_flops

    kind = run.split(":")[1]
    if "stopped" in raw:
        return stopped_summary(kind, raw)
    counts, w = raw["counts"], report["workload"]
    count_fn = ppo_step_flops if kind == "ppo" else eval_flops
    flops = count_fn(counts["query_tokens"], counts["response_tokens"], counts["reward_tokens"])
    samples = len(w["budgets"]) if kind == "ppo" else len(w["eval_prompts"])
    return summarize(kind, raw, flops, roofline_limits(report), samples)


def resummarize(report: dict) -> None:
    """Every run's summary again from its raw result (after the limits changed, or the formulas)."""
    for run, raw in report["raw"].items():
        report["results"][run] = run_summary(run, raw, report)


# -- Markdown ---------------------------------------------------------------------------------
def label(report: dict, contender: str) -> str:
    dtype = "float32" if contender != "notebook" else report["workload"]["notebook_dtype"]
    return {"ours": "ours"}.get(contender, f"notebook loop ({dtype})")


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


def _rows(report: dict, kind: str, rows: dict[str, dict]) -> list[str]:
    """The table of one workload: a row per phase and the total, a column per contender."""
    ours = rows.get("ours")
    others = [c for c in rows if c != "ours"]
    head = [f"{label(report, c)} s" for c in rows] + [
        f"speed-up vs {label(report, c)}" for c in others if ours
    ]
    head += ["GFLOP", "roofline s", "x roofline (" + ", ".join(label(report, c) for c in rows) + ")"]
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
    return lines


def _notes(report: dict, kind: str, rows: dict[str, dict]) -> list[str]:
    """The lines under a table: the workload's FLOPs, then one per contender."""
    reference = rows.get("ours") or next(iter(rows.values()))
    gflop = sum(p["gflop"] for p in reference["phases"].values())
    if kind == "ppo":
        lines = [f"- FLOPs of one PPO step: {gflop:.0f} GFLOP."]
    else:
        samples = len(report["workload"]["eval_prompts"])
        lines = [f"- FLOPs of one evaluation sample: {gflop / samples:.1f} GFLOP ({samples} samples)."]
    for c, r in rows.items():
        if "stopped" in r:
            lines.append(
                f"- {label(report, c)}: **stopped** by --worker-timeout "
                f"{r['stopped']['worker_timeout_s']:g} s (the worker's loading included), "
                f"{r['more_than_seconds']} s into its timed work; "
                "'not reached' marks the phases it had not finished"
            )
            continue
        lines.append(
            f"- {label(report, c)}: dtype {r['dtype']}; {r['generated_tokens']} generated tokens; "
            f"{r['generate_tokens_per_s']} tokens/s in generation, {r['tokens_per_s']} tokens/s overall; "
            f"{r['samples_per_s']} samples/s; peak RSS {r['peak_rss_mb']} MB; "
            f"load average (1 min) before/after: {' / '.join(r['loadavg_1min'])}"
        )
    return lines


def table(report: dict, kind: str) -> list[str]:
    rows = {c: report["results"][f"{c}:{kind}"] for c in CONTENDERS if f"{c}:{kind}" in report["results"]}
    return _rows(report, kind, rows) + [""] + _notes(report, kind, rows) + [""]


def _limits_line(report: dict) -> str:
    limits = report["limits"]
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
    return measured


def markdown(report: dict) -> str:
    m, w = report["machine"], report["workload"]
    budgets = w["budgets"]
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
        _limits_line(report) + " Roofline columns use the phase's dtype; generation's roofline is taken "
        "per decoder step (FLOPs at peak or bytes read at the read bandwidth, whichever is longer).",
        "",
        f"Workload: PPO batch {len(budgets)}, forced new tokens {min(budgets)}..{max(budgets)} "
        f"(sum {sum(budgets)}); evaluation {len(w['eval_prompts'])} samples x {w['eval_new_tokens']} tokens.",
        "",
    ]
    for kind, title in (("ppo", "PPO step"), ("eval", "Evaluation")):
        if any(key.endswith(f":{kind}") for key in report["results"]):
            lines += [f"## {title}", ""] + table(report, kind)
    return "\n".join(lines)


def save(report: dict, folder: Path, stem: str) -> None:
    """JSON, Markdown and the roofline figure (PNG) of a report, side by side."""
    from .figure import roofline_png

    (folder / f"{stem}.json").write_text(json.dumps(report, indent=2))
    labels = {c: label(report, c) for c in CONTENDERS}
    (folder / f"{stem}.png").write_bytes(roofline_png(report, labels, PHASES))
    (folder / f"{stem}.md").write_text(markdown(report) + f"\n![roofline]({stem}.png)\n")
