"""Where the ranks of a data-parallel training job meet (and the hosts of a sharded evaluation,
when they wait for each other): torch.distributed's static `env://` rendezvous, built from the
job's resource config as AWS's own training containers do.

Host i of the sorted `hosts` is node rank i; rank 0 (the first process of the environment's
`master_host`, the first sorted host) serves the rendezvous on port 7777; gloo talks over the
job's network interface. `MASTER_ADDR` and `MASTER_PORT` already in the environment win (local
runs, where the host names do not resolve).
Torch-free: the launcher and the entrypoint's checks read it before anything heavy loads.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass

from flan_t5_detox.contract.environment import JobHosts

MASTER_PORT = 7777


@dataclass(frozen=True)
class Rendezvous:
    master_addr: str
    master_port: int
    node_rank: int  # this host's index in the sorted hosts
    nodes: int
    processes_per_host: int
    interface: str = ""  # gloo's socket interface; "" = let gloo pick

    @property
    def world_size(self) -> int:
        return self.nodes * self.processes_per_host

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def rank(self, local_rank: int) -> int:
        return self.node_rank * self.processes_per_host + local_rank

    def environment(self, local_rank: int) -> dict[str, str]:
        """torch.distributed's `env://` variables for one process of this host. No LOCAL_RANK:
        without it accelerate takes its CPU (gloo) branch rather than its GPU one."""
        env = {
            "RANK": str(self.rank(local_rank)),
            "WORLD_SIZE": str(self.world_size),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }
        if self.interface:
            env["GLOO_SOCKET_IFNAME"] = self.interface
        return env


def rendezvous(env: JobHosts, processes_per_host: int, process_env: Mapping[str, str]) -> Rendezvous:
    """The rendezvous of this job's host, given the process environment it starts in."""
    # One host meets on loopback: its name need not resolve, and gloo needs no interface named.
    several = len(env.hosts) > 1
    interface = process_env.get("GLOO_SOCKET_IFNAME", env.network_interface_name if several else "")
    return Rendezvous(
        master_addr=process_env.get("MASTER_ADDR", env.master_host if several else "127.0.0.1"),
        master_port=int(process_env.get("MASTER_PORT", MASTER_PORT)),
        node_rank=env.host_index,
        nodes=len(env.hosts),
        processes_per_host=processes_per_host,
        interface=interface,
    )


def free_port() -> int:
    """A port free on loopback now, for a rendezvous of processes on this machine."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
