"""One PPO step's forward passes, old way against new, side by side in one process.

    python -m bench.ppo_passes        # after `python -m bench.run` has built bench/results/fixtures

The bench's 16 prompts and forced budgets (109..392 tokens), on flan-t5-base shapes with the
policy `DetoxTrainer` builds:

1. Training: trl's four mini-batches of four randomly drawn rows, forward + backward, each
   mini-batch run as one padded batch (the old way) against rows in length groups
   (`trl_trainer.length_groups`).
2. Scoring: the policy's no-grad pass over the batch, running its encoder (the old way) against
   taking the rollout's encoder states.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from flan_t5_detox.contract.settings import TrainConfig
from flan_t5_detox.ml import ppo, trl_trainer
from flan_t5_detox.ml.adapters import load_merged, read_lora_config
from flan_t5_detox.ml.data import Example
from flan_t5_detox.ml.generation import run_encoder
from flan_t5_detox.ml.loading import load_tokenizer
from flan_t5_detox.ml.policy import build_policy
from flan_t5_detox.ml.runtime import set_threads

from . import fixtures
from .common import RESULTS, command_line, make_workload


def _setup():
    workload = make_workload(fixtures.build(RESULTS / "fixtures"))  # bench.run's default sizes
    tokenizer = load_tokenizer(workload.base_model)
    peft_dir = Path(workload.peft_checkpoint)
    policy = build_policy(load_merged(workload.base_model, peft_dir), read_lora_config(peft_dir), 0)
    prompts = [
        Example(id=str(i), dialogue="", summary="", prompt=p) for i, p in enumerate(workload.train_prompts)
    ]
    trainer = ppo.DetoxTrainer(TrainConfig(batch_size=len(prompts)), policy, tokenizer, prompts, None)
    torch.manual_seed(0)
    start = policy.pretrained_model.config.decoder_start_token_id
    responses = [torch.cat([torch.tensor([start]), torch.randint(5, 30000, (n,))]) for n in workload.budgets]
    return trainer, trainer.query_ids, responses


def training(trainer, queries, responses, padding: float) -> float:
    """Seconds for forward + backward of trl's random mini-batches with this group padding."""
    trainer.trl.group_padding = padding
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(queries), generator=generator).tolist()
    start = time.perf_counter()
    for i in range(0, len(order), 4):
        rows = order[i : i + 4]
        qs, rs = [queries[j] for j in rows], [responses[j] for j in rows]
        inputs = trainer.trl.prepare_model_inputs(qs, rs)
        logprobs, _, values, masks = trainer.trl.batched_forward_pass(trainer.policy, qs, rs, inputs, True)
        ((logprobs + values) * masks).sum().backward()
        trainer.policy.zero_grad()
    return time.perf_counter() - start


def scoring(trainer, queries, responses, reuse: bool) -> float:
    inputs = trainer.trl.prepare_model_inputs(queries, responses)
    states = run_encoder(trainer.policy, trainer.tokenizer, queries)
    start = time.perf_counter()
    with torch.no_grad():
        if reuse:
            with trainer.trl.reusing_encoder_states(queries, states):
                trainer.trl.batched_forward_pass(trainer.policy, queries, responses, inputs)
        else:
            trainer.trl.batched_forward_pass(trainer.policy, queries, responses, inputs)
    return time.perf_counter() - start


def main(argv=None, repeats: int = 2) -> None:
    command_line("ppo_passes", __doc__).parse_args(argv)
    threads = set_threads(0)
    trainer, queries, responses = _setup()
    print(
        f"threads {threads}; responses {min(map(len, responses)) - 1}..{max(map(len, responses)) - 1} tokens"
    )
    default = trl_trainer.GROUP_PADDING
    contenders = {
        "training, each mini-batch padded to its longest row": lambda: training(
            trainer, queries, responses, 1e9
        ),
        "training, rows in length groups": lambda: training(trainer, queries, responses, default),
        "policy scoring, encoder run": lambda: scoring(trainer, queries, responses, False),
        "policy scoring, rollout encoder states": lambda: scoring(trainer, queries, responses, True),
    }
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(repeats):  # alternating, best of `repeats`
        for name, run in contenders.items():
            best[name] = min(best[name], run())
    trainer.trl.group_padding = default
    for name, seconds in best.items():
        print(f"{name}: {seconds:.2f} s", flush=True)


if __name__ == "__main__":
    main()
