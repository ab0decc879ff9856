"""The jobs' machine checks, run in setup before any model loads: will the run's files fit its
volume (`contract.disk`), will its peak memory fit what the job may use (`contract.memory`).
With `preflight=warn` a run that does not fit is only warned about.

The estimates need the models as folders; a model still to be fetched from the hub by name is
not sized, and the job says so in its log.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flan_t5_detox.contract import disk, memory
from flan_t5_detox.contract.settings import EvalConfig, TrainConfig

log = logging.getLogger(__name__)


def _folders(*models) -> bool:
    missing = [str(m) for m in models if not Path(m).is_dir()]
    if missing:
        log.info("preflight: %s not sized (fetched from the hub when loaded)", ", ".join(missing))
    return not missing


def check_training(
    config: TrainConfig, inputs, env, longest_prompt_chars: int, dtype_bytes: int, checkpoints_kept: int
) -> None:
    """Disk and memory of a train job (one process of `processes_per_host` on this host)."""
    refuse = config.preflight == "refuse"
    need = disk.training_need(
        config,
        inputs.peft_checkpoint,
        Path(inputs.base_model),
        env.checkpoint_dir,
        env.model_dir,
        env.output_data_dir,
        checkpoints_kept,
    )
    if need is not None:
        disk.check_room(need, disk.TRAIN_FIX, refuse)
    if _folders(inputs.base_model, inputs.reward_model):
        estimate = memory.estimate_memory(
            config, Path(inputs.base_model), inputs.peft_checkpoint, Path(inputs.reward_model),
            dtype_bytes, longest_prompt_chars,
        )  # fmt: skip
        limit = memory.memory_limit()
        memory.check_memory(estimate, limit, memory.TRAIN_LOWER, config.processes_per_host, refuse)


def check_evaluation(
    config: EvalConfig, inputs, report_dir: Path, samples: int, kept_steps: int, longest_prompt_chars: int,
    dtype_bytes: int,
) -> None:  # fmt: skip
    """Disk and memory of an evaluate job: its report (or part) and its three models."""
    refuse = config.preflight == "refuse"
    # Each of the k samples per dialogue is written with its figures (CSV, JSON, part).
    need = disk.evaluation_need(
        samples * config.samples_per_prompt, kept_steps, config.max_new_tokens, report_dir
    )
    disk.check_room(need, disk.EVALUATE_FIX, refuse)
    if _folders(inputs.base_model, inputs.reward_model):
        estimate = memory.estimate_memory(
            config, Path(inputs.base_model), inputs.before_adapter, Path(inputs.reward_model),
            dtype_bytes, longest_prompt_chars, kept_steps,
            Path(inputs.judge_model) if inputs.judge_model and Path(inputs.judge_model).is_dir() else None,
        )  # fmt: skip
        memory.check_memory(estimate, memory.memory_limit(), memory.EVALUATE_LOWER, 1, refuse)


# The settings that set a run's memory, as the marker of a running job records them.
TRAIN_MEMORY_SETTINGS = (
    "batch_size", "mini_batch_size", "generation_batch_size", "output_max_length",
    "input_max_text_length", "dtype", "processes_per_host",
)  # fmt: skip
EVALUATE_MEMORY_SETTINGS = ("generation_batch_size", "max_new_tokens", "input_max_text_length", "dtype")


def memory_settings(config) -> dict:
    names = TRAIN_MEMORY_SETTINGS if isinstance(config, TrainConfig) else EVALUATE_MEMORY_SETTINGS
    return {name: getattr(config, name) for name in names}
