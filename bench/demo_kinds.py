"""The demo's figures under the kernels of every CPU kind this machine can emulate, natively first.

    python -m bench.demo_kinds [--out DIR]

Runs `detox-demo` once per kind (about 2 minutes each on two cores) and prints, per kind, the
headline figures of its report and the demo's wall time: how far the README's table moves
across CPU kinds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests import cpu_kinds

DEMO = Path(sys.executable).parent / "detox-demo"


def figures(report: dict) -> dict:
    tox, rouge = report["metrics"]["response_toxicity"], report["metrics"]["rougeL"]
    return {
        "toxicity": f"{tox['before']['mean']:.3f} -> {tox['after']['mean']:.3f}",
        "difference [CI]": f"{tox['mean_diff']:+.3f} [{tox['ci_low']:+.3f}, {tox['ci_high']:+.3f}]",
        "t-test p": f"{tox['t_p']:.0e}",
        "ROUGE-L diff [CI]": f"{rouge['mean_diff']:+.3f} [{rouge['ci_low']:+.3f}, {rouge['ci_high']:+.3f}]",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/demo_kinds"))
    args = parser.parse_args(argv)
    kinds = [cpu_kinds.CpuKind("native", {})] + cpu_kinds.emulable()
    for kind in kinds:
        out = args.out / kind.name
        started = time.perf_counter()
        env = {**os.environ, **kind.env}
        subprocess.run([str(DEMO), "--out", str(out)], env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        report = json.loads((out / "evaluate/processing/output/report/report.json").read_text())
        row = " | ".join(f"{k} {v}" for k, v in figures(report).items())
        print(f"{kind.name:8s} | {row} | wall {wall:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
