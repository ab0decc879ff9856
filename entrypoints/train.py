"""`train` (detox-train): the SageMaker training job.

Reads the job contract, loads the summarizer and reward model, runs PPO with
checkpoints and SIGTERM handling, and writes model/ and output/data/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from flan_t5_detox import __version__
from flan_t5_detox.config import TrainConfig, parse_settings
from flan_t5_detox.contract import DEFAULT_ML_ROOT, TrainingJobEnvironment
from flan_t5_detox.job import run_job, setup_logging
from flan_t5_detox.metrics import MetricsLog, format_metrics_line

log = logging.getLogger("flan_t5_detox.train")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="detox-train",
        description="Detoxify a FLAN-T5 summarizer with PPO (SageMaker training-job entrypoint). "
        "Settings come from <ml-root>/input/config/hyperparameters.json; inputs from the channels "
        "base_model, peft_checkpoint, dataset, reward_model under <ml-root>/input/data/.",
    )
    parser.add_argument(
        "--ml-root", type=Path, default=DEFAULT_ML_ROOT, help="folder standing in for /opt/ml"
    )
    # SageMaker appends "train" to the image command; accept and ignore it.
    parser.add_argument("mode", nargs="?", choices=["train"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _publish(staging: Path, model_dir: Path) -> None:
    """Move finished files into model/ only once everything is written."""
    model_dir.mkdir(parents=True, exist_ok=True)
    for item in staging.iterdir():
        target = model_dir / item.name
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        shutil.move(str(item), target)
    staging.rmdir()


def train(env: TrainingJobEnvironment) -> int:
    config = parse_settings(TrainConfig, env.hyperparameters)  # fails before any model loads

    # Heavy imports only after the settings are known to be good.
    from flan_t5_detox import checkpoint, data, models
    from flan_t5_detox.inputs import model_source, peft_checkpoint_dir
    from flan_t5_detox.ppo import DetoxTrainer, Preempted, SigtermGuard, TrainingDiverged
    from flan_t5_detox.rewards import RewardModel

    records = data.load_records(env.channel("dataset"), config.dataset_name)
    splits = data.prepare_splits(
        records, config.input_min_text_length, config.input_max_text_length, config.test_size
    )
    data.BatchOrder(len(splits.train), config.batch_size, config.seed)  # enough prompts for one batch?
    base = model_source(env.channel("base_model"), config.base_model_name, "base model")
    reward_source = model_source(env.channel("reward_model"), config.reward_model_name, "reward model")
    peft_dir = peft_checkpoint_dir(env.channel("peft_checkpoint"), config.peft_checkpoint_s3_uri)

    threads = models.set_threads(config.num_threads)
    dtype = models.pick_dtype(config.dtype)
    log.info("dtype=%s threads=%d train_prompts=%d", dtype, threads, len(splits.train))
    tokenizer = models.load_tokenizer(base)
    summarization_config = models.read_lora_config(peft_dir)
    summarizer = models.load_summarizer(base, peft_dir, dtype)
    policy = models.build_policy(summarizer, summarization_config, config.seed)
    reward_model = RewardModel(reward_source, config.reward_label, batch_size=config.batch_size)

    def reward_fn(queries, responses, _ids):
        return reward_model.rewards([q + " " + r for q, r in zip(queries, responses)])

    trainer = DetoxTrainer(config, policy, tokenizer, splits.train, reward_fn)
    metrics_log = MetricsLog(env.output_data_dir / "metrics.jsonl")
    resumed = checkpoint.latest(env.checkpoint_dir)
    if resumed is not None:
        trainer.restore(resumed)
        log.info("resumed from checkpoint at step %d", resumed.step)
    metrics_log.truncate_after(trainer.step)

    from tqdm import tqdm

    started = time.time()
    status = "completed"
    with SigtermGuard():
        try:
            with tqdm(total=config.max_ppo_steps, initial=trainer.step, desc="PPO", file=sys.stderr) as bar:
                while trainer.step < config.max_ppo_steps:
                    result = trainer.run_step()
                    metrics_log.append(result.metrics)
                    print(format_metrics_line(result.metrics), flush=True)
                    bar.update(1)
                    if config.checkpoint_every and trainer.step % config.checkpoint_every == 0:
                        checkpoint.write(env.checkpoint_dir, trainer.last_good)
        except Preempted:
            path = checkpoint.write(env.checkpoint_dir, trainer.last_good)
            log.warning("SIGTERM: wrote %s (step %d); exiting", path, trainer.last_good.step)
            return 143
        except TrainingDiverged as exc:
            checkpoint.write(env.checkpoint_dir, trainer.last_good)
            status = f"diverged: {exc}"
            raise RuntimeError(f"{exc}; last good step {trainer.last_good.step} is checkpointed") from exc
    checkpoint.write(env.checkpoint_dir, trainer.last_good)

    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=env.model_dir.parent))
    info = models.AdapterInfo(
        base_model=config.base_model_name if env.channel("base_model") is None else "channel:base_model",
        summarization_adapter=config.peft_checkpoint_s3_uri or "channel:peft_checkpoint",
        rank=2 * summarization_config.r,  # summarization + detox adapters, concatenated
        ppo_steps=trainer.step,
        reward_model=config.reward_model_name
        if env.channel("reward_model") is None
        else "channel:reward_model",
        reward_label=config.reward_label,
    )
    models.save_detox_model(staging, policy, tokenizer, peft_dir, info)
    _publish(staging, env.model_dir)

    history = metrics_log.read()
    summary = {
        "status": status,
        "steps": trainer.step,
        "seconds_this_run": round(time.time() - started, 3),
        "final": history[-1] if history else None,
        "reward_mean_first": history[0]["reward_mean"] if history else None,
        "reward_mean_last": history[-1]["reward_mean"] if history else None,
        "settings": dataclasses.asdict(config),
        "dtype": str(dtype).replace("torch.", ""),
        "threads": threads,
        "kl_reference": "starting summarizer (summarization adapter merged; fresh LoRA trained on top)",
        "versions": _versions(),
    }
    (env.output_data_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))
    log.info("done: %d steps; adapter in %s", trainer.step, env.model_dir)
    return 0


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers
    import trl

    return {
        "flan_t5_detox": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "trl": trl.__version__,
        "python": sys.version.split()[0],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    return run_job(
        lambda: train(TrainingJobEnvironment.from_root(args.ml_root)), [args.ml_root / "output" / "failure"]
    )


if __name__ == "__main__":
    sys.exit(main())
