"""What the bench modules share: where results go, the workload both contenders get, the job
image's environment they run under, this machine's description, and the one way a measurement
runs in a process of its own (`run_worker`, answered by `python -m bench.worker`).

This module imports no other bench module, so every one may import it without a circle. The
job stack (torch and what builds on it) is imported inside the functions that need it, so a
command's `--help` and a report's re-render start without it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from detox_launcher.local_backend import image_environment

from flan_t5_detox.fixtures.embedded import embedded_default

RESULTS = Path(__file__).parent / "results"
# DialogSum-format dialogues of 200-1000 characters: the prompts of every run, so runs on
# different dates compare.
BENCH_SAMPLE = Path(__file__).parent / "dialogsum_bench_sample.jsonl"
# Where a worker keeps the phases it has finished, for a run the parent stops (--worker-timeout).
PARTIAL_RESULT_ENV = "BENCH_PARTIAL_RESULT"


def command_line(module: str, doc: str) -> argparse.ArgumentParser:
    """The parser of `python -m bench.<module>`, described by the first paragraph of its docstring."""
    return argparse.ArgumentParser(prog=f"python -m bench.{module}", description=doc.split("\n\n")[0])


def image_malloc_settings() -> dict[str, str]:
    """The job image's glibc malloc settings (container/job.env). They must be in a process's
    environment when it starts, and every contender gets them alike: the jobs ship with them, so
    the notebook's loop gets them too and only the loops differ."""
    return {k: v for k, v in image_environment().items() if k.startswith("MALLOC_")}


def embedded_channels() -> dict[str, Path]:
    """The train job's channels on the embedded default (the demo's models and sample)."""
    return embedded_default().channels()


# -- the workload -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    """How large a workload is; the defaults are the notebook's."""

    scale: float = 1.0  # multiplies the token budgets (100..400 new tokens, 100 in evaluation)
    batch_size: int = 16  # PPO batch
    eval_samples: int = 16  # evaluation prompts (the notebook used 11)
    seed: int = 0
    notebook_dtype: str = "bfloat16"  # the notebook loads the model in bf16


@dataclass
class Workload:
    """What both contenders are asked to do; plain data so it can cross a process boundary."""

    base_model: str
    peft_checkpoint: str
    reward_model: str
    train_prompts: list[str]
    budgets: list[int]  # new tokens per train prompt, drawn once with a seeded sampler
    eval_prompts: list[str]
    eval_new_tokens: int
    seed: int = 0
    notebook_dtype: str = "bfloat16"
    mini_batch_size: int = 4  # ours: PPO's mini-batch (the notebook's 4)


def make_workload(fixtures, sizes: Sizes = Sizes()) -> Workload:
    """The prompts and forced response budgets of `sizes`, on the models of `fixtures`."""
    from flan_t5_detox.ml import data
    from flan_t5_detox.ml.generation import LengthSampler

    splits = data.prepare_splits(data.read_records(BENCH_SAMPLE), 200, 1000, 0.2)
    low, high = max(2, round(100 * sizes.scale)), max(3, round(400 * sizes.scale))
    eval_prompts = [splits.test[i % len(splits.test)].prompt for i in range(sizes.eval_samples)]
    return Workload(
        base_model=str(fixtures.base_model),
        peft_checkpoint=str(fixtures.peft_checkpoint),
        reward_model=str(fixtures.reward_model),
        train_prompts=[e.prompt for e in splits.train[: sizes.batch_size]],
        budgets=LengthSampler(low, high, sizes.seed).sample(sizes.batch_size),
        eval_prompts=eval_prompts,
        eval_new_tokens=max(2, round(100 * sizes.scale)),
        seed=sizes.seed,
        notebook_dtype=sizes.notebook_dtype,
    )


# -- the machine ------------------------------------------------------------------------------
def machine() -> dict:
    from flan_t5_detox.ml.runtime import cpu_flags

    info = {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0))}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            info["cpu"] = line.split(":", 1)[1].strip()
            break
    info["simd_flags"] = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma")))
    info["contender_env"] = image_malloc_settings()
    return info


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0]


# -- one measurement, one process -------------------------------------------------------------
def run_worker(
    name: str, spec: dict, out: Path, env: dict | None = None, timeout: float | None = None
) -> dict:
    """The result of worker `name` (`python -m bench.worker`) on `spec`, in a clean process (its
    own peak RSS, no shared caches). `env` adds to this process's environment; a None value
    removes a variable. For a worker stopped at `timeout`, {"stopped": ...}: how long its timed
    work had run (a lower bound on its time) and the phases it had finished."""
    spec_path, result_path = out / f".{name}.spec.json", out / f".{name}.result.json"
    partial_path = out / f".{name}.partial.json"
    partial_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "bench.worker", name, str(spec_path), str(result_path)]
    full_env = {**os.environ, PARTIAL_RESULT_ENV: str(partial_path)}
    for key, value in (env or {}).items():
        full_env.pop(key, None) if value is None else full_env.update({key: value})
    load_before = loadavg()
    try:
        subprocess.run(cmd, check=True, cwd=Path(__file__).parent.parent, env=full_env, timeout=timeout)
        result = json.loads(result_path.read_text())
    except subprocess.TimeoutExpired:  # subprocess.run has killed the worker
        result = {"stopped": _stopped(partial_path, timeout)}
        print(f"{name}: stopped after {timeout:g} s; {json.dumps(result['stopped'])}", flush=True)
    result["loadavg_1min"] = [load_before, loadavg()]
    return result


def _stopped(partial_path: Path, timeout: float) -> dict:
    partial = json.loads(partial_path.read_text()) if partial_path.exists() else {}
    started = partial.get("started_at")
    return {
        "worker_timeout_s": timeout,
        "timed_work_s": round(time.time() - started, 1) if started else None,
        "finished_phases": partial.get("seconds", {}),
    }
