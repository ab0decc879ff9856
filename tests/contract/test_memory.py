"""What the job may use (a cgroup's limit, the machine's, the job's environment), the memory
preflight's verdicts, and the marker that names a run killed outright. The cgroup files are
laid out as the kernel shows them, in a folder the reader is pointed at; the estimate itself is
held to measured peaks in bench/RESULTS.md, and refusing a real job in tests/jobs."""

import json
import logging

import pytest

from flan_t5_detox.contract import memory


def _cgroup(tmp_path, proc_line: str, files: dict[str, str]):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cgroup").write_text(proc_line + "\n")
    for name, value in files.items():
        path = tmp_path / "sys" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    return {"proc_cgroup": tmp_path / "cgroup", "root": tmp_path / "sys"}


def test_the_smallest_cgroup_v2_limit_on_the_path_is_read(tmp_path):
    where = _cgroup(
        tmp_path, "0::/job/step",
        {"job/step/memory.max": "max", "job/memory.max": str(6 * 2**30), "memory.max": str(8 * 2**30)},
    )  # fmt: skip
    limit, source = memory.cgroup_limit(**where)
    assert limit == 6 * 2**30 and source == tmp_path / "sys" / "job" / "memory.max"


def test_cgroup_v1_and_no_limit_at_all(tmp_path):
    where = _cgroup(
        tmp_path, "12:cpu:/x\n5:memory:/docker/abc",
        {
            "memory/docker/abc/memory.limit_in_bytes": "9223372036854771712",  # v1's "no limit"
            "memory/docker/memory.limit_in_bytes": str(3 * 2**30),
        },
    )  # fmt: skip
    assert memory.cgroup_limit(**where)[0] == 3 * 2**30
    assert memory.cgroup_limit(**_cgroup(tmp_path / "v2", "0::/", {"memory.max": "max"})) is None


def test_the_limit_is_the_smallest_of_the_cgroup_the_machine_and_the_environment(tmp_path):
    where = _cgroup(tmp_path, "0::/", {"memory.max": str(4 * 2**30)})
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemAvailable:   30000000 kB\n")
    limit = memory.memory_limit({}, meminfo=meminfo, **where)
    assert limit.bytes == 4 * 2**30 and "cgroup" in limit.source
    limit = memory.memory_limit({memory.LIMIT_ENV: "1500"}, meminfo=meminfo, **where)
    assert limit.bytes == 1500 * 2**20 and memory.LIMIT_ENV in limit.source
    (tmp_path / "sys" / "memory.max").write_text("max\n")
    assert memory.memory_limit({}, meminfo=meminfo, **where).bytes == 30000000 * 1024
    with pytest.raises(memory.JobInputError, match="must be a number of MB"):
        memory.memory_limit({memory.LIMIT_ENV: "lots"}, meminfo=meminfo, **where)


def test_refused_with_the_figures_and_what_to_lower_warned_when_close(caplog):
    estimate = memory.MemoryEstimate(
        6 * 2**30, "training pass", {"process": 2**29, "training pass": 5 * 2**30}
    )
    limit = memory.MemoryLimit(5 * 2**30, "the cgroup's limit (/sys/fs/cgroup/memory.max)")
    with pytest.raises(memory.MemoryTooSmall) as caught:
        memory.check_memory(estimate, limit, memory.TRAIN_LOWER)
    message = str(caught.value)
    assert "estimated 6.00 GB at its peak (training pass: process 512.0 MB, training pass 5.00 GB)" in message
    assert "may use 5.00 GB, the cgroup's limit" in message and "lower batch_size" in message
    with caplog.at_level(logging.INFO):
        memory.check_memory(estimate, limit, memory.TRAIN_LOWER, refuse=False)
        assert "running anyway" in caplog.text
        caplog.clear()
        memory.check_memory(estimate, memory.MemoryLimit(7 * 2**30, "x"), memory.TRAIN_LOWER)
        assert "close to the limit" in caplog.text
        caplog.clear()
        with pytest.raises(memory.MemoryTooSmall, match="for each of 2 processes"):
            memory.check_memory(
                estimate, memory.MemoryLimit(10 * 2**30, "x"), memory.TRAIN_LOWER, processes=2
            )


def test_a_marker_left_behind_names_the_killed_run_and_one_that_ended_does_not(tmp_path, caplog):
    with memory.running(tmp_path, {"batch_size": 64}):
        assert memory.killed_run(tmp_path).settings == {"batch_size": 64}  # as a kill would leave it
    assert memory.killed_run(tmp_path) is None
    with pytest.raises(RuntimeError), memory.running(tmp_path, {"batch_size": 64}):
        raise RuntimeError("a failure the job reports itself")
    assert memory.killed_run(tmp_path) is None

    marker = json.loads(memory.marker_path(tmp_path).read_text())
    memory.marker_path(tmp_path).write_text(json.dumps({**marker, "ended": False}))  # SIGKILL: no end
    with caplog.at_level(logging.WARNING), memory.running(tmp_path, {"batch_size": 8}):
        pass
    assert "most likely killed for memory" in caplog.text and "batch_size=64" in caplog.text


def test_the_estimate_grows_with_the_settings_that_set_the_peak(tiny_models):
    from flan_t5_detox.contract.settings import EvalConfig, TrainConfig

    models = (tiny_models.base_model, tiny_models.peft_checkpoint, tiny_models.reward_model)

    def train(**settings):
        return memory.estimate_memory(TrainConfig(**settings), *models, 4, 500)

    small = train(mini_batch_size=4, output_max_length=100)
    assert small.phase == "training pass" and small.parts["process"] == memory.PROCESS_BYTES
    assert train(mini_batch_size=8, output_max_length=100).total > small.total
    assert train(mini_batch_size=4, output_max_length=200).total > small.total
    assert memory.estimate_memory(TrainConfig(), *models, 4, 1000).total > train().total  # longer prompts
    evaluation = memory.estimate_memory(EvalConfig(), *models, 4, 500)
    assert evaluation.phase == "generation"  # tiny models: the caches outweigh the weights
    larger = memory.estimate_memory(EvalConfig(generation_batch_size=32), *models, 4, 500)
    assert larger.total > evaluation.total
    assert memory.estimate_memory(EvalConfig(), *models, 4, 500, kept_steps=2).total >= evaluation.total
