"""One measurement in a process of its own, as `bench.common.run_worker` starts it: this machine's
limits (GEMM rate and bandwidth) or one contender's timed run. Reads a spec, writes a result
(both JSON).

    python -m bench.worker NAME SPEC RESULT
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .common import Workload, command_line


def limits(spec: dict) -> dict:
    import torch

    from .roofline import gemm_gflops, memory_gbps, read_gbps

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    return {
        "gemm_gflops": gemm_gflops(getattr(torch, spec["dtype"])),
        "memory_gbps": memory_gbps(),
        "read_gbps": read_gbps(),
    }


def main(argv=None) -> int:
    parser = command_line("worker", __doc__)
    parser.add_argument("name", help="limits, or a contender's worker: notebook_ppo, ours_eval, ...")
    parser.add_argument("spec", type=Path, help="the spec (JSON): a dtype, or a bench.common.Workload")
    parser.add_argument("result", type=Path, help="where the result goes (JSON)")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    if args.name == "limits":
        result = limits(spec)
    else:
        from .contenders import WORKERS

        result = WORKERS[args.name](Workload(**spec))
    args.result.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
