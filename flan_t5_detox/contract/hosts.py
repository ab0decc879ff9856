"""How SageMaker names the hosts of a job: `algo-1`, `algo-2`, ... for its instances in order.

The one place the naming is written; the layout writer, the launcher's local runs, the bench and
the tests build host names here, and the environment's one-host default is `host_name(0)`.
"""

from __future__ import annotations


def host_name(index: int) -> str:
    """The name SageMaker gives instance `index` (counted from 0) of a job."""
    if index < 0:
        raise ValueError(f"a host index counts from 0, got {index}")
    return f"algo-{index + 1}"


def host_names(count: int) -> list[str]:
    """The names of a job's `count` instances, in instance order."""
    return [host_name(index) for index in range(count)]
