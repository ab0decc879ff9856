"""The processes of a data-parallel training job: joining torch.distributed's gloo group, and the
few collective reductions the PPO step needs. One process alone is `World()`, on which every
reduction is the identity, so the single-process path runs the same code.

Device placement lives here too: the ranks compute on the CPU (gloo). A GPU build would pick
the device and the backend (nccl) in `join` and `World.device`, and nowhere else.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from flan_t5_detox.contract.cluster import Rendezvous

BACKEND = "gloo"


class RendezvousFailed(RuntimeError):
    """The ranks did not all meet within the timeout (a host died, or never started)."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the outputs and checkpoints, and prints the metrics line."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of a tensor of the same shape on each (detached; a copy)."""
        total = tensor.detach().clone()
        if self.size > 1:
            dist.all_reduce(total, dist.ReduceOp.SUM)
        return total

    def max(self, value: float) -> float:
        if self.size == 1:
            return value
        top = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(top, dist.ReduceOp.MAX)
        return float(top)

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (e.g. a SIGTERM seen by one host)."""
        return self.max(float(flag)) > 0

    def from_main(self, data: bytes | None) -> bytes | None:
        """Rank 0's bytes (None for none), on every rank: raw bytes, never a pickle."""
        if self.size == 1:
            return data
        length = torch.tensor([-1 if data is None else len(data)], dtype=torch.int64)
        dist.broadcast(length, src=0)
        if int(length) < 0:
            return None
        buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.is_main else None
        if buffer is None:
            buffer = torch.empty(int(length), dtype=torch.uint8)
        dist.broadcast(buffer, src=0)
        return buffer.numpy().tobytes()

    def barrier(self) -> None:
        """Return once every rank has called it."""
        if self.size > 1:
            dist.barrier()

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Each rank's tensor (same shape on each), in rank order."""
        if self.size == 1:
            return [tensor.detach().clone()]
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor.detach().contiguous())
        return parts


def _wait_for_name(host: str, deadline: float) -> None:
    """Hosts come up at different times: wait until rank 0's name resolves (as AWS's containers do)."""
    while True:
        try:
            socket.getaddrinfo(host, None)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RendezvousFailed(f"the rendezvous host {host!r} does not resolve") from None
            time.sleep(1)


def join(rendezvous: Rendezvous, local_rank: int, timeout: float) -> World:
    """Join the job's process group (gloo, `env://`); every collective then fails after `timeout`
    seconds without its peers, so a dead or missing host ends the job instead of hanging it."""
    if not rendezvous.distributed:
        # A stray WORLD_SIZE would make accelerate wait (30 minutes) for peers that never come.
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            os.environ.pop(name, None)
        return World()
    os.environ.update(rendezvous.environment(local_rank))
    rank = rendezvous.rank(local_rank)
    _wait_for_name(rendezvous.master_addr, time.monotonic() + timeout)
    where = f"{rendezvous.master_addr}:{rendezvous.master_port}"
    try:
        dist.init_process_group(
            BACKEND,
            init_method="env://",
            rank=rank,
            world_size=rendezvous.world_size,
            timeout=timedelta(seconds=timeout),
        )
        dist.barrier()  # every rank is here: the group is whole
    except (RuntimeError, TimeoutError) as exc:  # TimeoutError: rank 0's store never answered
        raise RendezvousFailed(
            f"rank {rank} of {rendezvous.world_size}: the ranks did not all meet at {where} within "
            f"{timeout:g} s ({str(exc).splitlines()[0]}). Check that every host started and that "
            "the hosts reach each other on that port"
        ) from exc
    return World(rank, rendezvous.world_size)


def leave(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def wait_for_all(rendezvous: Rendezvous, timeout: float) -> None:
    """Return once one process of every host has called this, or raise `RendezvousFailed` after
    `timeout` seconds without them all."""
    leave(join(rendezvous, 0, timeout))
