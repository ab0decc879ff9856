"""Data-parallel PPO training: its overhead measured on this machine side by side in one
invocation, and the step time on N instances projected from measured parts.

    python -m bench.data_parallel [--batch 8] [--steps 6]     # weak scaling + all-reduce costs
    python -m bench.data_parallel --real-size                  # + the projection (about 10 min)

1. Weak scaling, measured: the real train job (`detox_entrypoints.train`, each rank its own
   process with one thread) on the embedded default, three runs one after the other:
   a. one rank, global batch b (mini-batch b/2);
   b. two ranks meeting over loopback (two hosts' layouts), global batch 2b (mini-batch b): each
      rank rolls out and trains on b rows, as in a;
   c. two independent jobs as in a, at once: the machine as busy as in b, without the group;
   d. a again, so drift of the machine's speed shows.
   Efficiency = median step time of a (and d) / median step time of b, first step left out;
   at equal load = c / b, the cost of the group itself where two busy processes slow each other.
2. All-reduce, measured: gloo over loopback between two processes, for the gradient of the real
   trainable weights (flan-t5-base with a rank-32 LoRA on q and v, and the value head) and for
   one float (the latency each small statistic's reduction pays).
3. Projection (`--real-size`): one rank's PPO step on the real architectures with B/N rows of the
   global batch B = 16 (N = 1, 2, 4, 8), measured here with `bench.contenders.ours_ppo`, plus
   the gradient all-reduce of each mini-batch and the small reductions at a network bandwidth
   and latency that are assumptions, not measurements (printed with the figures).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from flan_t5_detox.contract.cluster import free_port
from flan_t5_detox.contract.hosts import host_names
from flan_t5_detox.contract.layout import write_training_layout

from .common import (
    RESULTS,
    Sizes,
    command_line,
    embedded_channels,
    image_malloc_settings,
    machine,
    make_workload,
    run_worker,
)

TRAIN = [sys.executable, "-m", "detox_entrypoints.train"]
# flan-t5-base: 12 encoder layers (self-attention), 12 decoder layers (self- and cross-attention);
# LoRA r=32 on q and v: A (768 x 32) and B (32 x 768) each; the value head is 768 -> 1.
REAL_TRAINABLE = (12 + 12 + 12) * 2 * (2 * 768 * 32) + 768 + 1
REAL_BATCH, REAL_MINI_BATCH = 16, 4
# GlobalMean's per mini-batch: the token count, whitening (2), both losses, the statistics, the
# two variances (2).
SMALL_REDUCTIONS_PER_MINI_BATCH = 7
SMALL_REDUCTIONS_PER_STEP = 7  # rewards' finiteness, KL, scores and lengths, four timings


def _settings(batch: int, steps: int) -> dict:
    return {
        "max_ppo_steps": steps,
        "batch_size": batch,
        "mini_batch_size": batch // 2,
        "output_min_length": 40,
        "output_max_length": 60,
        "dtype": "float32",
        "num_threads": 1,
        "checkpoint_every": 0,
    }


def _job(root: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return subprocess.Popen(
        [*TRAIN, "--ml-root", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )


def _step_times(root: Path) -> list[dict]:
    lines = (root / "output" / "data" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines][1:]  # the first step warms up


def _run(work: Path, name: str, hosts: int, batch: int, steps: int) -> dict:
    channels = embedded_channels()
    names = host_names(hosts)
    roots = [
        write_training_layout(
            work / f"{name}-{host}", channels, _settings(batch, steps), "local", "link", names, host
        )
        for host in names
    ]
    port = free_port()
    jobs = [_job(root, port) for root in roots]
    for job, root in zip(jobs, roots):
        if job.wait() != 0:
            raise SystemExit(f"a train job failed: see {root / 'output' / 'failure'}")
    rows = _step_times(roots[0])
    phases = ("time_step", "time_generate", "time_reward", "time_ppo")
    return {phase: statistics.median(r[phase] for r in rows) for phase in phases}


def _twins(work: Path, batch: int, steps: int) -> list[dict]:
    """Two independent one-rank jobs at once: the machine as loaded as by two ranks, no group."""
    results: dict[int, dict] = {}
    threads = [
        threading.Thread(target=lambda k=k: results.__setitem__(k, _run(work, f"twin-{k}", 1, batch, steps)))
        for k in (0, 1)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [results[0], results[1]]


def weak_scaling(batch: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-dp-") as folder:
        work = Path(folder)
        first = _run(work, "one-a", 1, batch, steps)
        two = _run(work, "two", 2, 2 * batch, steps)
        twins = _twins(work, batch, steps)
        last = _run(work, "one-c", 1, batch, steps)
    one = (first["time_step"] + last["time_step"]) / 2
    twin = max(t["time_step"] for t in twins)
    return {
        "one_rank_batch": batch,
        "two_ranks_batch": 2 * batch,
        "one_rank_first": first,
        "two_ranks": two,
        "two_independent_one_rank_jobs": twins,
        "one_rank_last": last,
        # 1 rank alone / 2 ranks: what the side-by-side asks for
        "efficiency": round(one / two["time_step"], 3),
        # 1 rank alone / 1 rank beside a twin: how this machine runs two busy processes at once
        "machine_concurrency": round(one / twin, 3),
        # 1 rank beside a twin / 2 ranks: the data-parallel cost alone (the group, its waits)
        "efficiency_at_equal_load": round(twin / two["time_step"], 3),
    }


def _all_reduce_worker(rank: int, port: int, sizes: list[int], repeats: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=2)
    seconds = {}
    for size in sizes:
        tensor = torch.ones(size)
        dist.all_reduce(tensor)  # warm-up: connections, buffers
        dist.barrier()
        started = time.perf_counter()
        for _ in range(repeats):
            dist.all_reduce(tensor)
        seconds[size] = (time.perf_counter() - started) / repeats
    if rank == 0:
        Path(out).write_text(json.dumps(seconds))
    dist.destroy_process_group()


def all_reduce_costs(repeats: int = 50) -> dict:
    import torch.multiprocessing as mp

    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        mp.start_processes(
            _all_reduce_worker,
            (free_port(), [1, REAL_TRAINABLE], repeats, out.name),
            nprocs=2,
            start_method="spawn",
        )
        seconds = json.loads(Path(out.name).read_text())
    gradient = seconds[str(REAL_TRAINABLE)]
    return {
        "one_float_s": seconds["1"],
        "gradient_floats": REAL_TRAINABLE,
        "gradient_mb": round(REAL_TRAINABLE * 4 / 1e6, 2),
        "gradient_s": gradient,
        "loopback_gb_per_s": round(REAL_TRAINABLE * 4 / gradient / 1e9, 2),
    }


def real_rank_steps(out: Path) -> dict[int, dict]:
    """One rank's measured PPO step on the real architectures with B/N rows, for each N."""
    from . import fixtures  # torch and transformers: only in the run that needs them

    built = fixtures.build(out / "fixtures", 0)
    steps = {}
    for instances in (1, 2, 4, 8):
        sizes = Sizes(batch_size=REAL_BATCH // instances, eval_samples=1, notebook_dtype="float32")
        spec = make_workload(built, sizes).__dict__
        # One rank's share of each global mini-batch (of at least one row per rank).
        spec["mini_batch_size"] = max(REAL_MINI_BATCH, instances) // instances
        result = run_worker("ours_ppo", spec, out, image_malloc_settings())
        steps[instances] = {k: round(v, 2) for k, v in result["seconds"].items()}
        print(f"one rank, {REAL_BATCH // instances} rows: {json.dumps(steps[instances])}", flush=True)
    return steps


def project(steps: dict[int, dict], bandwidth_gb_per_s: float, latency_s: float) -> dict[int, dict]:
    """Step time on N instances: the slowest rank's compute (taken as one rank's measured step with
    B/N rows) plus the reductions: a ring all-reduce of the gradient per mini-batch (2 (N-1)/N of
    its bytes each way) and the small reductions, each 2 (N-1) latencies."""
    projected = {}
    for instances, seconds in steps.items():
        if instances == 1:
            communication = 0.0
        else:
            ring = 2 * (instances - 1) / instances * REAL_TRAINABLE * 4 / (bandwidth_gb_per_s * 1e9)
            mini_batches = REAL_BATCH // max(REAL_MINI_BATCH, instances)
            small = mini_batches * SMALL_REDUCTIONS_PER_MINI_BATCH + SMALL_REDUCTIONS_PER_STEP
            communication = (
                mini_batches * (ring + 2 * (instances - 1) * latency_s)
                + small * 2 * (instances - 1) * latency_s
            )
        step = seconds["step"] + communication
        projected[instances] = {
            "compute_s": seconds["step"],
            "communication_s": round(communication, 3),
            "step_s": round(step, 2),
            "speed_up": round(steps[1]["step"] / step, 2),
        }
    return projected


def main(argv=None) -> int:
    parser = command_line("data_parallel", __doc__)
    parser.add_argument("--batch", type=int, default=8, help="rows per rank in the weak-scaling runs")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument(
        "--real-size", action="store_true", help="also measure real-size rank steps and project"
    )
    parser.add_argument(
        "--bandwidth", type=float, default=1.25, help="assumed GB/s between instances (10 Gbit/s)"
    )
    parser.add_argument("--latency", type=float, default=100e-6, help="assumed seconds per message hop")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine()}
    report["weak_scaling"] = weak_scaling(args.batch, args.steps)
    print(json.dumps(report["weak_scaling"], indent=1), flush=True)
    report["all_reduce"] = all_reduce_costs()
    print(json.dumps(report["all_reduce"], indent=1), flush=True)
    if args.real_size:
        args.out.mkdir(parents=True, exist_ok=True)
        steps = real_rank_steps(args.out)
        report["projection"] = {
            "assumed": {"bandwidth_gb_per_s": args.bandwidth, "latency_s": args.latency},
            "rank_steps_measured": steps,
            "instances": project(steps, args.bandwidth, args.latency),
        }
        print(json.dumps(report["projection"], indent=1), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"data-parallel-{report['started'].replace(':', '')}.json").write_text(
        json.dumps(report, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
