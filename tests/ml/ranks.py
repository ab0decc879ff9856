"""Running a test's function on real gloo ranks over loopback, each in its own spawned process."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch.multiprocessing as mp

from flan_t5_detox.contract.cluster import Rendezvous, free_port
from flan_t5_detox.ml import distributed
from flan_t5_detox.ml.distributed import World


def on_gloo_ranks(fn: Callable[[World], object], folder: Path, ranks: int = 2) -> list:
    """`fn(world)` on each of `ranks` processes of one world; their JSON-able results, by rank.
    `fn` must be a module-level function (spawned processes import it by name)."""
    out = str(Path(folder) / "rank")
    mp.start_processes(_join_and_run, (fn, free_port(), out, ranks), nprocs=ranks, start_method="spawn")
    return [json.loads(Path(f"{out}-{rank}.json").read_text()) for rank in range(ranks)]


def _join_and_run(local_rank: int, fn, port: int, out: str, ranks: int) -> None:
    world = distributed.join(Rendezvous("127.0.0.1", port, 0, 1, ranks), local_rank, timeout=30)
    try:
        Path(f"{out}-{world.rank}.json").write_text(json.dumps(fn(world)))
    finally:
        distributed.leave(world)
