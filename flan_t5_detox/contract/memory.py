"""Too little memory: a run that cannot fit is refused before any model loads, and a run the
kernel killed anyway is named by the next start.

`estimate_memory` gives a job's peak resident memory from the model configs and weight files,
the dtype and the settings; `bench/memory.py` measures it against the jobs' real peak
(`bench/RESULTS.md` holds the formula's terms, its calibration and its error). `memory_limit`
reads what the job may use: the cgroup's limit where one is set (a container's, SageMaker's),
else the machine's available memory, and never more than `DETOX_MEMORY_LIMIT_MB` in the job's
environment. `check_memory` refuses (`MemoryTooSmall`, exit 2) with the figures and the
settings to lower, and warns within `WARN_MARGIN`.

The kernel's OOM killer sends SIGKILL, which leaves no failure file. So a job writes a small
`RunningMarker` when it starts and removes it however it ends; a marker found at the next start
means the last run was killed, most likely for memory, and the job says so with that run's
settings. The marker changes nothing else: the resume reads only the checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from flan_t5_detox.contract.disk import ADAPTER_WEIGHTS, parameter_count, size_text
from flan_t5_detox.contract.failure import JobInputError

log = logging.getLogger(__name__)

LIMIT_ENV = "DETOX_MEMORY_LIMIT_MB"
WARN_MARGIN = 0.25  # the estimate's stated error (bench/RESULTS.md): warn above (1 - this) x the limit
UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a huge number

# Calibrated at real size and on the embedded default (bench/RESULTS.md, "Memory preflight").
PROCESS_BYTES = 560 * 2**20  # the interpreter with the job stack imported, data and tokenizers
ACTIVATION_FACTOR = 0.8  # measured training activations over the counted ones (0.77, 0.79)
CHARS_PER_TOKEN = 4  # English text in T5's SentencePiece vocabulary, roughly


class MemoryTooSmall(JobInputError):
    """The run's estimated peak memory is above what the job may use."""

    prefix = "Not enough memory"


# -- what the job may use ------------------------------------------------------------------------
@dataclass
class MemoryLimit:
    bytes: int
    source: str  # where the figure came from, for the messages


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def cgroup_limit(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")):
    """The smallest memory limit on this process's cgroup path (v2 `memory.max`, v1
    `memory.limit_in_bytes`), as (bytes, file), or None when none is set."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2
            base, name = root, "memory.max"
        elif "memory" in controllers.split(","):  # v1
            base, name = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        folder = base / path.lstrip("/")
        while True:
            value = _read_int(folder / name)
            if value is not None and value < UNLIMITED:
                found.append((value, folder / name))
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return min(found) if found else None


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def memory_limit(environ: dict[str, str] | None = None, **where) -> MemoryLimit | None:
    """What the job may use: the smallest of the cgroup's limit, the machine's available memory
    and `DETOX_MEMORY_LIMIT_MB`, whichever are known."""
    environ = os.environ if environ is None else environ
    options = []
    cgroup = cgroup_limit(**{k: v for k, v in where.items() if k in ("proc_cgroup", "root")})
    if cgroup:
        options.append(MemoryLimit(cgroup[0], f"the cgroup's limit ({cgroup[1]})"))
    available = available_memory(**{k: v for k, v in where.items() if k == "meminfo"})
    if available:
        options.append(MemoryLimit(available, "the machine's available memory (/proc/meminfo)"))
    if environ.get(LIMIT_ENV):
        try:
            options.append(
                MemoryLimit(int(float(environ[LIMIT_ENV]) * 2**20), f"{LIMIT_ENV} in the environment")
            )
        except ValueError:
            raise JobInputError(f"{LIMIT_ENV} must be a number of MB, got {environ[LIMIT_ENV]!r}") from None
    return min(options, key=lambda limit: limit.bytes) if options else None


# -- the estimate ---------------------------------------------------------------------------------
@dataclass
class MemoryEstimate:
    total: int
    phase: str  # the phase that peaks
    parts: dict[str, int]  # what the peak phase holds, by part

    def text(self) -> str:
        return (
            f"{size_text(self.total)} at its peak ({self.phase}: "
            + ", ".join(f"{name} {size_text(count)}" for name, count in self.parts.items())
            + ")"
        )


def _config(folder: Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())


def _t5_dims(config: dict) -> dict:
    return {
        "d": config["d_model"],
        "ff": config["d_ff"] * (2 if "gated" in config.get("feed_forward_proj", "") else 1),
        "heads": config["num_heads"],
        "inner": config["num_heads"] * config["d_kv"],
        "enc": config["num_layers"],
        "dec": config.get("num_decoder_layers") or config["num_layers"],
        "vocab": config["vocab_size"],
    }


def activation_bytes(dims: dict, rows: int, query: int, response: int) -> int:
    """What one training pass of `rows` rows keeps for its backward: per token and layer, the
    hidden states and projections (about 10 of width d_model in the encoder, 16 in the decoder),
    the feed-forward's inner states and each head's attention scores and probabilities; and the
    logits over the vocabulary with their log-softmax and gradient. All counted at 4 bytes: fp32
    is what was measured, and a bf16 run keeps many of them in fp32 too (T5's layer norms, the
    fp32 LoRA paths and value head, the logits), so it is not counted at half."""
    d, ff, heads = dims["d"], dims["ff"], dims["heads"]
    encoder = query * dims["enc"] * (10 * d + 2 * ff + 3 * heads * query)
    decoder = response * dims["dec"] * (16 * d + 2 * ff + 3 * heads * (response + query))
    logits = 4 * response * dims["vocab"]
    return int(ACTIVATION_FACTOR * rows * (encoder + decoder + logits) * 4)


def kv_cache_bytes(dims: dict, rows: int, query: int, response: int, dtype_bytes: int) -> int:
    """Generation's key/value caches (self-attention to `response`, cross-attention to `query`)
    and encoder states, preallocated for the whole batch."""
    per_row = dims["dec"] * 2 * dims["inner"] * (response + query) + query * dims["d"]
    return rows * per_row * dtype_bytes


def query_tokens(longest_prompt_chars: int) -> int:
    return math.ceil(longest_prompt_chars / CHARS_PER_TOKEN) + 1


def estimate_memory(
    config,
    base_model: Path,
    adapter_dir: Path,
    reward_model: Path,
    dtype_bytes: int,
    longest_prompt_chars: int = 0,
    kept_steps: int = 0,
    judge_model: Path | None = None,
) -> MemoryEstimate:
    """The peak resident memory of one process of the train job (a `TrainConfig`) or the
    evaluate job (an `EvalConfig`) on these models. Loading a model holds its fp32 weights twice
    (the state dict read from disk and the model built from it), and the jobs' allocator keeps
    what was freed for reuse, so the peak is the largest of the loading phases and the steady
    phase (weights at rest plus the largest working set)."""
    dims = _t5_dims(_config(base_model))
    n_base = parameter_count(base_model) or 0
    n_reward = parameter_count(reward_model) or 0
    n_lora = parameter_count(adapter_dir, ADAPTER_WEIGHTS) or 0
    longest = longest_prompt_chars or config.input_max_text_length + 64
    query = query_tokens(longest)
    reward = 4 * n_reward  # the reward model runs in fp32
    if judge_model is not None:  # the evaluation's judge runs beside it, in fp32 too
        reward += 4 * (parameter_count(judge_model) or 0)
    summarizer = dtype_bytes * n_base
    training = hasattr(config, "mini_batch_size")
    if training:
        response = config.output_max_length + 1  # the decoder start token
        generation_rows = config.generation_batch_size or config.batch_size
        working = {
            "training pass": activation_bytes(dims, config.mini_batch_size, query, response),
            "rollout": kv_cache_bytes(dims, generation_rows, query, response, dtype_bytes),
        }
        rest = {"policy": summarizer, "reward model": reward, "LoRA, gradients, Adam": 16 * n_lora}
        phases = {
            "loading the summarizer": {"its fp32 weights, twice": 8 * n_base},
            "loading the reward model": {"policy": summarizer, "its weights, twice": 2 * reward},
        }
    else:
        response = config.max_new_tokens + 1
        rows = config.generation_batch_size
        working = {
            "generation": kv_cache_bytes(dims, rows, query, response, dtype_bytes),
            # Perplexity under the starting summarizer: one teacher-forced pass, its fp32 logits.
            "perplexity pass": 4 * rows * response * dims["vocab"],
        }
        rest = {"reward model": reward, "summarizers before and after": 2 * summarizer}
        phases = {
            "loading the reward model": {"its weights, twice": 2 * reward},
            "loading the 'after' summarizer": {
                "reward model": reward,
                "'before' summarizer": summarizer,
                "its fp32 weights, twice": 8 * n_base,
            },
        }
        if kept_steps:  # each kept adapter's summarizer is loaded beside both
            phases["loading a kept adapter's summarizer"] = {
                "reward model": reward,
                "summarizers before and after": 2 * summarizer,
                "its fp32 weights, twice": 8 * n_base,
            }
    name = max(working, key=working.get)
    phases[name] = {**rest, name: working[name]}
    phase = max(phases, key=lambda p: sum(phases[p].values()))
    parts = {"process": PROCESS_BYTES, **phases[phase]}
    return MemoryEstimate(sum(parts.values()), phase, parts)


TRAIN_LOWER = (
    "lower batch_size or generation_batch_size (the rollout), mini_batch_size (the training pass), "
    "output_max_length, or input_max_text_length; or choose an instance with more memory"
)
EVALUATE_LOWER = "lower generation_batch_size or max_new_tokens; or choose an instance with more memory"


def check_memory(
    estimate: MemoryEstimate, limit: MemoryLimit | None, lower: str, processes: int = 1, refuse: bool = True
) -> None:
    """Refuse a run whose `processes` (the ranks on this host) cannot fit `limit`; warn when close."""
    if limit is None:
        log.info("memory: estimated %s; what the job may use is unknown", estimate.text())
        return
    need = processes * estimate.total
    each = f" for each of {processes} processes" if processes > 1 else ""
    figures = f"estimated {estimate.text()}{each}; the job may use {size_text(limit.bytes)}, {limit.source}"
    if need > limit.bytes:
        message = f"the run will not fit in memory: {figures}. To fit, {lower}"
        if refuse:
            raise MemoryTooSmall(message)
        log.warning("%s (preflight=warn: running anyway)", message)
    elif need > (1 - WARN_MARGIN) * limit.bytes:
        log.warning(
            "memory: close to the limit (the estimate's error is about %d%%): %s", WARN_MARGIN * 100, figures
        )
    else:
        log.info("memory: %s", figures)


# -- a run killed anyway -------------------------------------------------------------------------
MARKER = ".job-running.json"


@dataclass
class RunningMarker:
    started: str
    pid: int
    settings: dict  # the ones that set the memory a run takes
    ended: bool = False


def marker_path(folder: Path) -> Path:
    return Path(folder) / MARKER


def killed_run(folder: Path) -> RunningMarker | None:
    """The marker of an earlier run in `folder` that started and never ended, if any."""
    try:
        marker = RunningMarker(**json.loads(marker_path(folder).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return None if marker.ended else marker


def killed_message(marker: RunningMarker) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in marker.settings.items())
    return (
        f"the last run (started {marker.started}) ended without finishing or failing: it was most likely "
        f"killed for memory (the kernel's OOM killer leaves no failure file). Its settings: {shown}"
    )


def _write_marker(folder: Path, marker: RunningMarker) -> None:
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        marker_path(folder).write_text(json.dumps(asdict(marker)))
    except OSError as exc:  # best effort: a folder that cannot take it fails later, clearly
        log.warning("cannot write %s (%s)", marker_path(folder), exc.strerror)
        marker_path(folder).unlink(missing_ok=True)


@contextmanager
def running(folder: Path, settings: dict) -> Iterator[None]:
    """Mark a run as under way in `folder` while the block runs; first say if the last run there
    was killed. However the block ends the marker says so: it is overwritten, not deleted, so a
    copy synced elsewhere (SageMaker's checkpoint sync) says so too."""
    previous = killed_run(folder)
    if previous is not None:
        log.warning(
            "%s. This run starts as usual (a train job resumes from its newest checkpoint); lower "
            "those settings if it is killed again", killed_message(previous)
        )  # fmt: skip
    marker = RunningMarker(time.strftime("%Y-%m-%dT%H:%M:%S%z"), os.getpid(), settings)
    _write_marker(folder, marker)
    try:
        yield
    finally:
        marker.ended = True
        _write_marker(folder, marker)
