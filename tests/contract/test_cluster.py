import json

from flan_t5_detox.contract.cluster import MASTER_PORT, rendezvous
from flan_t5_detox.contract.environment import ProcessingJobEnvironment, TrainingJobEnvironment
from flan_t5_detox.contract.layout import training_resource_config
from flan_t5_detox.contract.paths import MlPaths


def _environment(tmp_path, hosts, current):
    paths = MlPaths(tmp_path)
    paths.config_dir.mkdir(parents=True)
    paths.resource_config.write_text(json.dumps(training_resource_config("ml.m5.2xlarge", hosts, current)))
    return TrainingJobEnvironment.from_root(tmp_path, env={})


def test_the_static_rendezvous_of_a_multi_instance_job(tmp_path):
    env = _environment(tmp_path, ["algo-2", "algo-1", "algo-3"], "algo-3")
    meeting = rendezvous(env, 2, {})
    assert (meeting.master_addr, meeting.master_port) == ("algo-1", MASTER_PORT)  # the first sorted host
    assert meeting.node_rank == 2 and meeting.world_size == 6 and meeting.distributed
    assert meeting.environment(1) == {
        "RANK": "5",
        "WORLD_SIZE": "6",
        "MASTER_ADDR": "algo-1",
        "MASTER_PORT": "7777",
        "GLOO_SOCKET_IFNAME": "eth0",
    }


def test_the_process_environment_wins_and_one_host_needs_no_rendezvous(tmp_path):
    env = _environment(tmp_path, ["algo-1", "algo-2"], "algo-1")
    meeting = rendezvous(
        env, 1, {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511", "GLOO_SOCKET_IFNAME": "lo"}
    )
    assert (meeting.master_addr, meeting.master_port, meeting.interface) == ("127.0.0.1", 29511, "lo")
    alone = rendezvous(_environment(tmp_path / "one", ["algo-1"], "algo-1"), 1, {})
    assert not alone.distributed and alone.world_size == 1
    assert "LOCAL_RANK" not in meeting.environment(0)  # accelerate's CPU branch needs it unset


def test_a_processing_jobs_hosts_meet_at_the_first_sorted_host_with_no_interface_named(tmp_path):
    """A processing job's resource config names no network interface: gloo picks its own."""
    paths = MlPaths(tmp_path)
    paths.processing_resource_config.parent.mkdir(parents=True)
    paths.processing_resource_config.write_text(
        json.dumps({"current_host": "algo-2", "hosts": ["algo-2", "algo-1"]})
    )
    meeting = rendezvous(ProcessingJobEnvironment.from_root(tmp_path), 1, {})
    assert (meeting.master_addr, meeting.master_port, meeting.interface) == ("algo-1", MASTER_PORT, "")
    assert (meeting.node_rank, meeting.world_size) == (1, 2)
    assert "GLOO_SOCKET_IFNAME" not in meeting.environment(0)
