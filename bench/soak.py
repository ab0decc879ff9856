"""A soak: hundreds of PPO steps in one train job, its resident memory sampled after every step.

    python -m bench.soak [--steps 300]     # the embedded default, the demo's PPO settings

The train job runs as its own process (`detox_entrypoints.train`), exactly as in a container;
this script reads the process's `VmRSS` from /proc each time metrics.jsonl gains a line. After a
warm-up (allocator pools, the first checkpoint, caches), memory that grows with the step count
would show as a slope: metrics kept in memory, caches, the decoder's key/value arena. The result
is printed as JSON: RSS at chosen steps and the least-squares slope after warm-up, in MB per 100
steps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from flan_t5_detox.contract.layout import write_training_layout

from .common import command_line, embedded_channels

WARM_UP = 20  # steps before the slope is fitted


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def main(argv: list[str] | None = None) -> None:
    parser = command_line("soak", __doc__)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    from detox_entrypoints.demo import TRAIN_HYPERPARAMETERS

    root = write_training_layout(
        Path(tempfile.mkdtemp(prefix="soak-")) / "ml",
        embedded_channels(),
        {**TRAIN_HYPERPARAMETERS, "max_ppo_steps": args.steps},  # checkpoint_every keeps its default, 1
    )
    metrics = root / "output" / "data" / "metrics.jsonl"
    started = time.perf_counter()
    job = subprocess.Popen(
        [sys.executable, "-m", "detox_entrypoints.train", "--ml-root", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    samples: dict[int, float] = {}
    while job.poll() is None:
        steps = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        if steps and steps not in samples:
            samples[steps] = rss_mb(job.pid)
        time.sleep(0.02)
    if job.returncode != 0:
        raise SystemExit(f"the train job failed (exit {job.returncode}); see {root / 'output' / 'failure'}")
    steps = np.array(sorted(s for s in samples if s >= WARM_UP))
    rss = np.array([samples[s] for s in steps])
    slope = float(np.polyfit(steps, rss, 1)[0]) * 100
    marks = [s for s in (1, WARM_UP, 50, 100, 200, 300, args.steps) if s in samples]
    print(
        json.dumps(
            {
                "steps": args.steps,
                "seconds": round(time.perf_counter() - started, 1),
                "steps_sampled": len(samples),
                "rss_mb_at_step": {s: round(samples[s], 1) for s in sorted(set(marks))},
                "rss_mb_after_warm_up": {
                    "min": round(float(rss.min()), 1),
                    "max": round(float(rss.max()), 1),
                },
                "slope_mb_per_100_steps": round(slope, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
