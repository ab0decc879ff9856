"""Where the seconds of the PPO passes and of decoding go, by operator and by dtype, against the
GEMM roofline of each dtype: torch.profiler over the project's own passes, in one process.

    python -m bench.profile --dtype float32 --scale 0.25
    python -m bench.profile --dtype bfloat16            # real size; bf16 is slow where emulated

On the bench's real-size stand-ins (`python -m bench.run` builds them), three sections:

- decoding: the rollout's sampling of the PPO batch by the policy, each row to its budget;
- training: forward + backward of trl's mini-batches of the PPO batch (16 rows, 100..400 x scale
  tokens each), rows in length groups, as `bench.ppo_passes` runs them;
- scoring: the policy's no-grad pass over the batch, on the rollout's encoder states.

Each section runs once unprofiled (warm-up), then once under the profiler. An operator's self
time is the wall time its calling thread spent in it, not in its children; its intra-op threads
are not counted apart, so the self times of a section add up to its wall time less Python's.
The profiler adds a cost to every call it records: the section's unprofiled time (its warm-up
run) says how much, and operators of many short calls look larger than they are.
GEMMs (`aten::mm`, `addmm`, `bmm`) are set against the best GFLOP/s `bench.roofline` measures
for their dtype: "at peak" is the time they would take at that rate. Copies a GEMM makes of its
operands (a kernel that cannot take an operand's strides copies it first) are their own rows,
"copy inside GEMM": not in the GEMM's self time, but caused by it.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from flan_t5_detox.ml.generation import SamplingSettings, generate
from flan_t5_detox.ml.runtime import pick_dtype, set_threads

from . import ppo_passes
from .common import RESULTS, Sizes, command_line, loadavg, machine
from .roofline import gemm_gflops

GEMMS = ("aten::mm", "aten::addmm", "aten::bmm")
# Operators that copy a tensor: within a GEMM they are the copies the GEMM makes of operands its
# kernel cannot take in their strides (e.g. a cache's prefix view), which count against the GEMM.
COPIES = ("aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy")
# The dtype names the profiler records, as torch names them.
DTYPE_NAMES = {"float": "float32", "c10::BFloat16": "bfloat16", "c10::Half": "float16", "double": "float64"}


@dataclass
class OperatorTime:
    """One operator on inputs of one dtype combination, summed over a section."""

    name: str
    dtypes: str  # of its tensor inputs, e.g. "bfloat16,float32"
    within: str = ""  # the GEMM a copy runs inside, if any
    calls: int = 0
    self_s: float = 0.0
    gflop: float = 0.0

    @property
    def kind(self) -> str:
        if self.name in GEMMS:
            return "GEMM"
        if self.name in ("aten::copy_", "aten::_to_copy") and "," in self.dtypes:
            return "cast"  # a copy between two dtypes
        if self.within:
            return "copy inside GEMM"
        return "other"


@dataclass
class Section:
    name: str
    wall_s: float  # under the profiler
    unprofiled_s: float  # the same work without it: the profiler's cost is per call
    operators: list[OperatorTime]

    def by_kind(self) -> dict[str, float]:
        """Self seconds per kind of work and dtype, e.g. "GEMM bfloat16"."""
        seconds: dict[str, float] = defaultdict(float)
        for op in self.operators:
            seconds[f"{op.kind} {op.dtypes}" if op.kind != "other" else "other"] += op.self_s
        seconds["Python and untraced"] = self.wall_s - sum(op.self_s for op in self.operators)
        return dict(sorted(seconds.items(), key=lambda kv: -kv[1]))


def _tensor_dtypes(dtypes: list[str], shapes: list[list[int]]) -> str:
    """The distinct dtypes of an operator's tensor inputs; scalars, empty slots and 0-dim tensors
    (Python numbers wrapped as float64) left out."""
    names = [DTYPE_NAMES.get(d, d) for d, shape in zip(dtypes, shapes) if d and d != "Scalar" and shape]
    return ",".join(sorted(set(names))) or "-"


def _enclosing_gemm(event) -> str:
    """The GEMM a copying operator runs inside (its nearest GEMM ancestor), or ""."""
    if event.name not in COPIES:
        return ""
    parent = event.cpu_parent
    while parent is not None and parent.name not in GEMMS:
        parent = parent.cpu_parent
    return parent.name if parent is not None else ""


def profiled(name: str, work) -> Section:
    """`work()` once to warm up (timed), then once under torch.profiler; its operators by self time."""
    start = time.perf_counter()
    work()
    unprofiled = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        start = time.perf_counter()
        work()
        wall = time.perf_counter() - start
    # The dtypes are on the profiler's raw events, keyed as the events of `prof.events()` are.
    inputs = {e.correlation_id(): (e.dtypes(), e.shapes()) for e in prof.profiler.kineto_results.events()}
    table: dict[tuple[str, str], OperatorTime] = {}
    for event in prof.events():
        key = (event.name, _tensor_dtypes(*inputs.get(event.id, ([], []))), _enclosing_gemm(event))
        op = table.setdefault(key, OperatorTime(*key))
        op.calls += 1
        op.self_s += event.self_cpu_time_total / 1e6
        op.gflop += (event.flops or 0) / 1e9
    operators = sorted(table.values(), key=lambda op: -op.self_s)
    return Section(name, wall, unprofiled, operators)


def sections(dtype: torch.dtype, sizes: Sizes) -> list[Section]:
    passes = ppo_passes.setup(sizes, dtype)
    budgets = [len(r) - 1 for r in passes.responses]
    # EOS is never sampled below min_length: every row decodes its whole budget, as in bench.run.
    sampling = SamplingSettings(min_length=max(budgets) + 1, top_k=0, top_p=1.0)
    policy = passes.trainer.policy

    def decoding():
        torch.manual_seed(passes.workload.seed)
        generate(policy, passes.tokenizer, passes.queries, budgets, sampling, len(budgets))

    padding = ppo_passes.default_group_padding()
    return [
        profiled("decoding (the rollout's)", decoding),
        profiled("training forward + backward", lambda: ppo_passes.training(passes, padding)),
        profiled("scoring", lambda: ppo_passes.scoring(passes, reuse=True)),
    ]


def render(report: dict) -> str:
    peaks = report["gemm_peak_gflops"]
    lines = [
        f"dtype {report['dtype']}, scale {report['scale']}, threads {report['threads']}, "
        f"load {report['loadavg_1min']}; CPU {report['machine'].get('cpu')}, "
        f"flags {' '.join(report['machine']['simd_flags'])}",
        "",
    ]
    for section in report["sections"]:
        ops = [OperatorTime(**op) for op in section["operators"]]
        wall = section["wall_s"]
        gemm_s = sum(op.self_s for op in ops if op.kind == "GEMM")
        at_peak = sum(op.gflop / peaks[op.dtypes] for op in ops if op.kind == "GEMM" and op.dtypes in peaks)
        lines += [
            f"### {section['name']}: {wall:.2f} s profiled, {section['unprofiled_s']:.2f} s not; "
            f"GEMMs {gemm_s:.2f} s, {at_peak:.2f} s at peak",
            "",
            "| work | seconds | share |",
            "|---|---:|---:|",
        ]
        by_kind = Section(section["name"], wall, section["unprofiled_s"], ops).by_kind()
        lines += [f"| {kind} | {s:.3f} | {s / wall:.0%} |" for kind, s in by_kind.items()]
        lines += [
            "",
            "| operator | dtypes | calls | self s | share | GFLOP/s | of peak |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for op in ops[:12]:
            rate = op.gflop / op.self_s if op.gflop and op.self_s else 0.0
            of_peak = f"{rate / peaks[op.dtypes]:.0%}" if rate and op.dtypes in peaks else ""
            name = f"{op.name} in {op.within}" if op.within else op.name
            lines.append(
                f"| {name} | {op.dtypes} | {op.calls} | {op.self_s:.3f} | {op.self_s / wall:.0%} | "
                f"{f'{rate:.1f}' if rate else ''} | {of_peak} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = command_line("profile", __doc__)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--scale", type=float, default=Sizes.scale, help="multiplies the token budgets")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    threads = set_threads(0)
    dtype = pick_dtype(args.dtype)
    dtype_name = str(dtype).replace("torch.", "")
    # The best rate of the largest GEMM shape per dtype the passes use: their roofline.
    peaks = {
        name: max(gemm_gflops(d).values()) for name, d in (("float32", torch.float32), (dtype_name, dtype))
    }
    load = loadavg()
    found = sections(dtype, Sizes(scale=args.scale))
    report = {
        "dtype": dtype_name,
        "scale": args.scale,
        "threads": threads,
        "machine": machine(),
        "loadavg_1min": [load, loadavg()],
        "gemm_peak_gflops": peaks,
        "sections": [asdict(section) for section in found],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"profile-{dtype_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    text = render(report)
    stem.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
