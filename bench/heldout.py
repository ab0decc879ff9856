"""The cost of one held-out evaluation while training (`eval_every`), on the embedded default.

    python -m bench.heldout                 # the demo's settings: 64 held-out prompts, budgets 60
    python -m bench.heldout --calls 5 --samples 128

The trainer is set up as the demo's train job (batch 32, responses of up to 60 tokens, fp32, one
thread); each call measures the policy on the held-out prompts (`HeldOut.measure`: the evaluate
job's generation and scoring, then the KL's sampling and its two log-prob passes), and the
evaluate job's part alone is timed beside it. The first call warms up and is left out. CPU
seconds (one thread) are less moved by other processes than wall seconds. For scale, one PPO
step of the same trainer is timed too.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from flan_t5_detox.contract.settings import TrainConfig, heldout_settings
from flan_t5_detox.fixtures import SAMPLE_DATASET
from flan_t5_detox.fixtures.embedded import embedded_default
from flan_t5_detox.ml import adapters, data, evaluation, runtime
from flan_t5_detox.ml.heldout import HeldOut
from flan_t5_detox.ml.loading import load_tokenizer
from flan_t5_detox.ml.policy import build_policy
from flan_t5_detox.ml.ppo import DetoxTrainer
from flan_t5_detox.ml.rewards import RewardModel

from .common import command_line


def main(argv=None) -> None:
    parser = command_line("heldout", __doc__)
    parser.add_argument("--calls", type=int, default=5, help="timed calls (after one warm-up)")
    parser.add_argument("--samples", type=int, default=64, help="held-out prompts (eval_samples)")
    args = parser.parse_args(argv)
    config = TrainConfig(
        batch_size=32,
        mini_batch_size=8,
        learning_rate=3e-3,
        output_min_length=40,
        output_max_length=60,
        dtype="float32",
        num_threads=1,
        eval_every=1,
        eval_samples=args.samples,
    )
    machine = runtime.setup(config.dtype, config.num_threads)
    models = embedded_default()
    tokenizer = load_tokenizer(models.base_model)
    prompts = data.training_prompts(SAMPLE_DATASET, config)
    policy = build_policy(
        adapters.load_merged(models.base_model, models.peft_checkpoint, machine.dtype),
        adapters.read_lora_config(models.peft_checkpoint),
        config.seed,
    )
    reward_model = RewardModel(
        models.reward_model, config.reward_label, config.reward_input, config.batch_size
    )
    heldout = HeldOut(prompts.validation, reward_model, heldout_settings(config))
    trainer = DetoxTrainer(config, policy, tokenizer, prompts.train, reward_model.rewards)
    step_seconds = trainer.run_step().metrics["time_step"]  # no held-out phase: trainer.heldout is None
    seconds, cpu, evaluate_only = [], [], []
    for _ in range(args.calls + 1):
        started, started_cpu = time.perf_counter(), time.process_time()
        heldout.measure(policy, tokenizer, trainer.trl)
        seconds.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
        started = time.perf_counter()  # the evaluate job's part alone: without the KL's passes
        evaluation.evaluate_model(policy, tokenizer, heldout.examples, reward_model, heldout.config)
        evaluate_only.append(time.perf_counter() - started)
    timed = np.array(seconds[1:])
    print(
        json.dumps(
            {
                "heldout_prompts": len(prompts.validation),
                "max_new_tokens": heldout.config.max_new_tokens,
                "calls": len(timed),
                "seconds_per_call_mean": round(float(timed.mean()), 3),
                "seconds_per_call_min": round(float(timed.min()), 3),
                "seconds_per_call_max": round(float(timed.max()), 3),
                "cpu_seconds_per_call_mean": round(float(np.mean(cpu[1:])), 3),
                "evaluate_model_seconds_mean": round(float(np.mean(evaluate_only[1:])), 3),
                "ppo_step_seconds": round(step_seconds, 3),
                "threads": torch.get_num_threads(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
