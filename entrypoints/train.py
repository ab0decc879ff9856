"""`train` (detox-train): the SageMaker training job, as a recipe.

setup  settings and inputs (before any model loads), runtime, the process group, models, the
       PPO trainer
run    PPO steps with checkpoints, resuming from the newest one; SIGTERM checkpoints and exits
save   model/ (one PEFT adapter for the plain base model) and output/data/training_summary.json

On several hosts (resourceconfig.json) each host runs one rank, or `processes_per_host` ranks
started with torch.multiprocessing; they meet at the static rendezvous of `contract.cluster`
and train data-parallel. Rank 0 alone writes model/, output/data/ and the checkpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from flan_t5_detox.contract.cluster import rendezvous
from flan_t5_detox.contract.environment import TrainingJobEnvironment
from flan_t5_detox.contract.failure import JobInputError, run_job, setup_logging
from flan_t5_detox.contract.paths import METRICS_FILE, ML_ROOT, MlPaths
from flan_t5_detox.contract.settings import TrainConfig, parse_settings

log = logging.getLogger("flan_t5_detox.train")
EXIT_PREEMPTED = 143  # 128 + SIGTERM, as a process killed by it


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="detox-train",
        description="Detoxify a FLAN-T5 summarizer with PPO (SageMaker training-job entrypoint). "
        "Settings come from <ml-root>/input/config/hyperparameters.json; inputs from the channels "
        "base_model, peft_checkpoint, dataset, reward_model under <ml-root>/input/data/.",
    )
    parser.add_argument("--ml-root", type=Path, default=ML_ROOT, help="folder standing in for /opt/ml")
    # SageMaker appends "train" to the image command; accept and ignore it.
    parser.add_argument("mode", nargs="?", choices=["train"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def train(env: TrainingJobEnvironment, scratch: Path, local_rank: int = 0) -> int:
    config = parse_settings(TrainConfig, env.hyperparameters)  # fails before any model loads
    meeting = rendezvous(env, config.processes_per_host, os.environ)

    # Heavy imports only once the settings are known to be good.
    from flan_t5_detox.contract.inputs import training_inputs
    from flan_t5_detox.contract.metrics import MetricsLog
    from flan_t5_detox.contract.outputs import check_writable, publish
    from flan_t5_detox.ml import adapters, data, distributed, runtime
    from flan_t5_detox.ml.loading import load_tokenizer
    from flan_t5_detox.ml.policy import build_policy
    from flan_t5_detox.ml.ppo import DetoxTrainer
    from flan_t5_detox.ml.rewards import RewardModel
    from flan_t5_detox.ml.training import TrainingRun

    if config.batch_size % meeting.world_size or config.mini_batch_size % meeting.world_size:
        raise JobInputError(
            f"batch_size ({config.batch_size}) and mini_batch_size ({config.mini_batch_size}) are "
            f"global, split over {meeting.world_size} processes ({meeting.nodes} hosts x "
            f"{meeting.processes_per_host}): make both multiples of {meeting.world_size}"
        )
    # Setup: outputs, inputs and data first, so bad input fails before the models load.
    check_writable(env.model_dir, "the model folder")
    check_writable(env.output_data_dir, "the output data folder")
    check_writable(env.checkpoint_dir, "the checkpoint folder")
    inputs = training_inputs(env, config, scratch)
    prompts = data.training_prompts(inputs.dataset, config)
    machine = runtime.setup(config.dtype, config.num_threads, config.processes_per_host)
    world = distributed.join(meeting, local_rank, config.collective_timeout)
    log.info(
        "rank %d/%d dtype=%s threads=%d train_prompts=%d",
        world.rank,
        world.size,
        machine.dtype_name,
        machine.threads,
        len(prompts),
    )
    tokenizer = load_tokenizer(inputs.base_model)
    summarization = adapters.read_lora_config(inputs.peft_checkpoint)
    policy = build_policy(
        adapters.load_merged(inputs.base_model, inputs.peft_checkpoint, machine.dtype),
        summarization,
        config.seed,
    )
    reward_model = RewardModel(
        inputs.reward_model, config.reward_label, config.reward_input, batch_size=config.batch_size
    )
    trainer = DetoxTrainer(config, policy, tokenizer, prompts, reward_model.rewards, world)

    # Run. Adapters kept along the way live beside the checkpoints, so a restarted job has them.
    started = time.time()
    metrics = MetricsLog(env.output_data_dir / METRICS_FILE)
    provenance = adapters.Provenance(**inputs.provenance, reward_label=config.reward_label)
    kept = env.checkpoint_dir / adapters.STEPS_DIR

    def keep_adapter(step: int) -> None:
        if config.save_adapter_every and step % config.save_adapter_every == 0:
            adapters.save_adapter(kept / str(step), policy, inputs.peft_checkpoint, provenance, step)

    run = TrainingRun(trainer, env.checkpoint_dir, metrics, config.checkpoint_every, keep_adapter)
    run.resume()
    outcome = run.run(config.max_ppo_steps)
    distributed.leave(world)
    if outcome.preempted:
        return EXIT_PREEMPTED
    if not world.is_main:
        return 0

    # Save: model/ appears whole or not at all.
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=env.model_dir.parent))
    info = adapters.save_detox_model(
        staging, policy, tokenizer, inputs.peft_checkpoint, provenance, outcome.steps
    )
    for step, folder in adapters.step_adapters(env.checkpoint_dir).items():
        if step <= outcome.steps:
            shutil.copytree(folder, staging / adapters.STEPS_DIR / str(step))
    publish(staging, env.model_dir)
    history = trainer.history  # steps 1..N, whichever runs did them (the checkpoints carry it)
    summary = {
        "status": "completed",
        "steps": outcome.steps,
        "seconds_this_run": round(time.time() - started, 3),
        "final": history[-1] if history else None,
        "reward_mean_first": history[0]["reward_mean"] if history else None,
        "reward_mean_last": history[-1]["reward_mean"] if history else None,
        "settings": dataclasses.asdict(config),
        "world_size": world.size,
        "adapter": dataclasses.asdict(info),
        **machine.describe(),
        "kl_reference": "starting summarizer (summarization adapter merged; fresh LoRA trained on top)",
        "versions": runtime.versions(),
    }
    (env.output_data_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))
    log.info("done: %d steps; adapter in %s", outcome.steps, env.model_dir)
    return 0


def run_rank(ml_root: Path, local_rank: int = 0) -> int:
    """One rank's job, with its own scratch folder (a downloaded adapter; gone at exit)."""
    env = TrainingJobEnvironment.from_root(ml_root)
    scratch = Path(tempfile.mkdtemp(prefix="detox-train-"))
    try:
        return train(env, scratch, local_rank)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _spawned_rank(local_rank: int, ml_root: Path) -> None:
    """A process of `processes_per_host` > 1: its exit code is its job's."""
    setup_logging()
    code = run_job(lambda: run_rank(ml_root, local_rank), [MlPaths(ml_root).failure])
    if code:
        sys.exit(code)


def spawn_ranks(ml_root: Path, processes: int) -> int:
    """This host's ranks as torch.multiprocessing processes (torchrun of torch 1.13 fails on
    Python 3.11). SIGTERM is passed on to each, so each checkpoints or exits as it would alone."""
    import signal

    import torch.multiprocessing as mp

    context = mp.start_processes(_spawned_rank, (ml_root,), processes, join=False, start_method="spawn")

    def forward(signum, _frame):
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while not context.join():
            pass
    except mp.ProcessExitedException as exc:
        return exc.exit_code if exc.exit_code and exc.exit_code > 0 else 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()

    def body() -> int:
        env = TrainingJobEnvironment.from_root(args.ml_root)
        processes = parse_settings(TrainConfig, env.hyperparameters).processes_per_host
        if processes > 1:
            return spawn_ranks(args.ml_root, processes)
        return run_rank(args.ml_root)

    return run_job(body, [MlPaths(args.ml_root).failure])


if __name__ == "__main__":
    sys.exit(main())
