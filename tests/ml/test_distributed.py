"""World's reductions on one process (identities) and on two real gloo processes over loopback."""

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from flan_t5_detox.contract.cluster import Rendezvous
from flan_t5_detox.ml import distributed
from flan_t5_detox.ml.distributed import World
from tests.servers import free_port


def test_one_process_is_the_identity():
    world = World()
    tensor = torch.tensor([1.0, 2.0])
    assert world.is_main and torch.equal(world.sum(tensor), tensor)
    assert world.max(3.5) == 3.5 and world.any(True) and not world.any(False)
    assert world.from_main(b"abc") == b"abc" and world.from_main(None) is None
    assert [t.tolist() for t in world.gather(tensor)] == [[1.0, 2.0]]


def _rank(local_rank, port, out):
    meeting = Rendezvous("127.0.0.1", port, 0, 1, 2)
    world = distributed.join(meeting, local_rank, timeout=30)
    r = world.rank
    result = {
        "rank": r,
        "sum": world.sum(torch.tensor([r + 1.0, 10.0])).tolist(),
        "max": world.max(float(r)),
        "any": world.any(r == 1),
        "none": world.any(False),
        "gather": [t.tolist() for t in world.gather(torch.tensor([float(r)] * 2))],
        "from_main": world.from_main(b"state of rank 0" if world.is_main else None).decode(),
        "from_main_none": world.from_main(None) is None,
    }
    with open(f"{out}-{r}.json", "w") as handle:
        json.dump(result, handle)
    world.barrier()
    distributed.leave(world)


def test_two_gloo_ranks_reduce_gather_and_share_rank_0s_bytes(tmp_path):
    mp.start_processes(_rank, (free_port(), str(tmp_path / "r")), nprocs=2, start_method="spawn")
    results = [json.loads((tmp_path / f"r-{r}.json").read_text()) for r in (0, 1)]
    for result in results:
        assert result["sum"] == [3.0, 20.0]
        assert result["max"] == 1.0 and result["any"] is True and result["none"] is False
        assert result["gather"] == [[0.0, 0.0], [1.0, 1.0]]
        assert result["from_main"] == "state of rank 0" and result["from_main_none"]


@pytest.mark.parametrize("rank", [0, 1], ids=["rank 0 alone", "rank 0 never comes"])
def test_a_missing_peer_fails_the_rendezvous_in_bounded_time(monkeypatch, rank):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):  # join sets them: restored after
        monkeypatch.setenv(name, "")
    meeting = Rendezvous("127.0.0.1", free_port(), rank, 2, 1)
    with pytest.raises(
        distributed.RendezvousFailed, match=rf"rank {rank} of 2: the ranks did not all meet .* within 3 s"
    ):
        distributed.join(meeting, 0, timeout=3)


def test_wait_for_all_returns_once_every_host_has_called_it(tmp_path):
    mp.start_processes(_waiting_host, (free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    times = {name: json.loads((tmp_path / name).read_text()) for name in ("0", "1")}
    assert times["0"]["called"] < times["1"]["called"]  # host 1 came 2 s late
    assert times["0"]["returned"] >= times["1"]["called"]  # and host 0 waited for it


def _waiting_host(index, port, out):
    import time

    if index == 1:
        time.sleep(2)
    called = time.time()
    distributed.wait_for_all(Rendezvous("127.0.0.1", port, index, 2, 1), timeout=60)
    (Path(out) / str(index)).write_text(json.dumps({"called": called, "returned": time.time()}))
