"""The roofline figure of a benchmark report: per phase, each contender's measured seconds
beside the phase's roofline seconds (log scale), one panel per workload (PPO step,
evaluation). The gap between a bar and its roofline mark is how far that phase is from
this machine's limit."""

from __future__ import annotations

import numpy as np

COLOURS = {"notebook": "#c0504d", "notebook_fp32": "#e8a33d", "ours": "#4f81bd"}


def _runs(report: dict, kind: str, contenders) -> dict[str, dict]:
    results = report["results"]
    return {c: results[f"{c}:{kind}"] for c in contenders if f"{c}:{kind}" in results}


def roofline_png(report: dict, labels: dict[str, str], phases: dict[str, list[str]]) -> bytes:
    """PNG bytes; `labels` names each contender (in drawing order), `phases` lists each
    workload's phases."""
    import io

    from matplotlib.figure import Figure  # no pyplot: no global state, always Agg

    kinds = [k for k in phases if _runs(report, k, labels)]
    fig = Figure(figsize=(6.4 * len(kinds), 4.2), dpi=100, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(kinds)))
    for ax, kind in zip(axes, kinds):
        runs = _runs(report, kind, labels)
        shown = [p for p in phases[kind] if any(r["phases"][p]["roofline_seconds"] for r in runs.values())]
        x = np.arange(len(shown))
        width = 0.8 / len(runs)
        for i, (contender, run) in enumerate(runs.items()):
            # a stopped run's unfinished phases draw no bar
            seconds = [run["phases"][p]["seconds"] or np.nan for p in shown]
            label = labels[contender]
            if "stopped" in run:
                label += f" (stopped after {run['more_than_seconds']:.0f} s)"
            ax.bar(x + (i - (len(runs) - 1) / 2) * width, seconds, width, label=label,
                   color=COLOURS[contender])  # fmt: skip
        # The roofline is a property of the work, the same for every contender: ours' counts.
        reference = runs.get("ours") or next(iter(runs.values()))
        roof = [reference["phases"][p]["roofline_seconds"] for p in shown]
        ax.scatter(x, roof, marker="_", s=2500, color="black", zorder=3, label="roofline")
        ax.set_yscale("log")
        ax.set_xticks(x, [p.replace("ppo_", "") for p in shown], rotation=20)
        ax.set_ylabel("seconds (log)")
        title = "PPO step" if kind == "ppo" else "evaluation"
        ax.set_title(f"{title}: measured vs roofline ({reference['dtype']} for ours)")
        ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
