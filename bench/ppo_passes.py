"""One PPO step's forward passes, old way against new, side by side in one process.

    python -m bench.ppo_passes        # after `python -m bench.run` has built bench/results/fixtures

The bench's 16 prompts and forced budgets (109..392 tokens), on flan-t5-base shapes with the
policy `DetoxTrainer` builds:

1. Training: trl's four mini-batches of four randomly drawn rows, forward + backward, each
   mini-batch run as one padded batch (the old way) against rows in length groups
   (`grouping.length_groups`).
2. Scoring: the policy's no-grad pass over the batch, running its encoder (the old way) against
   taking the rollout's encoder states.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from flan_t5_detox.contract.settings import TrainConfig
from flan_t5_detox.ml import grouping, ppo
from flan_t5_detox.ml.adapters import load_merged, read_lora_config
from flan_t5_detox.ml.data import Example
from flan_t5_detox.ml.generation import run_encoder
from flan_t5_detox.ml.loading import load_tokenizer
from flan_t5_detox.ml.policy import build_policy
from flan_t5_detox.ml.runtime import set_threads
from flan_t5_detox.ml.trl_trainer import EncoderStates

from . import fixtures
from .common import RESULTS, Sizes, Workload, command_line, make_workload


@dataclass
class Passes:
    """The policy `DetoxTrainer` builds, the bench's PPO batch and forced responses."""

    workload: Workload
    trainer: ppo.DetoxTrainer
    tokenizer: object
    queries: list[torch.Tensor]
    responses: list[torch.Tensor]  # decoder start, then the row's budget of tokens


def setup(sizes: Sizes = Sizes(), dtype: torch.dtype = torch.float32) -> Passes:
    workload = make_workload(fixtures.build(RESULTS / "fixtures"), sizes)
    tokenizer = load_tokenizer(workload.base_model)
    peft_dir = Path(workload.peft_checkpoint)
    policy = build_policy(load_merged(workload.base_model, peft_dir, dtype), read_lora_config(peft_dir), 0)
    prompts = [
        Example(id=str(i), dialogue="", summary="", prompt=p) for i, p in enumerate(workload.train_prompts)
    ]
    trainer = ppo.DetoxTrainer(TrainConfig(batch_size=len(prompts)), policy, tokenizer, prompts, None)
    torch.manual_seed(0)
    start = policy.pretrained_model.config.decoder_start_token_id
    responses = [torch.cat([torch.tensor([start]), torch.randint(5, 30000, (n,))]) for n in workload.budgets]
    return Passes(workload, trainer, tokenizer, trainer.query_ids, responses)


def default_group_padding() -> float:
    return grouping.GROUP_PADDING


def training(passes: Passes, padding: float) -> float:
    """Seconds for forward + backward of trl's random mini-batches with this group padding."""
    trl, queries, responses = passes.trainer.trl, passes.queries, passes.responses
    trl.group_padding = padding
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(queries), generator=generator).tolist()
    start = time.perf_counter()
    for i in range(0, len(order), 4):
        rows = order[i : i + 4]
        qs, rs = [queries[j] for j in rows], [responses[j] for j in rows]
        inputs = trl.prepare_model_inputs(qs, rs)
        logprobs, _, values, masks = trl.batched_forward_pass(passes.trainer.policy, qs, rs, inputs, True)
        ((logprobs + values) * masks).sum().backward()
        passes.trainer.policy.zero_grad()
    trl.group_padding = default_group_padding()
    return time.perf_counter() - start


def scoring(passes: Passes, reuse: bool) -> float:
    trainer, queries, responses = passes.trainer, passes.queries, passes.responses
    inputs = trainer.trl.prepare_model_inputs(queries, responses)
    states = run_encoder(trainer.policy, trainer.tokenizer, queries)
    start = time.perf_counter()
    with torch.no_grad():
        if reuse:
            encoded = EncoderStates(queries, states, len(queries))
            trainer.trl.batched_forward_pass(trainer.policy, queries, responses, inputs, False, encoded)
        else:
            trainer.trl.batched_forward_pass(trainer.policy, queries, responses, inputs)
    return time.perf_counter() - start


def main(argv=None, repeats: int = 2) -> None:
    command_line("ppo_passes", __doc__).parse_args(argv)
    threads = set_threads(0)
    passes = setup()
    lengths = [len(r) - 1 for r in passes.responses]
    print(f"threads {threads}; responses {min(lengths)}..{max(lengths)} tokens")
    contenders = {
        "training, each mini-batch padded to its longest row": lambda: training(passes, 1e9),
        "training, rows in length groups": lambda: training(passes, default_group_padding()),
        "policy scoring, encoder run": lambda: scoring(passes, False),
        "policy scoring, rollout encoder states": lambda: scoring(passes, True),
    }
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(repeats):  # alternating, best of `repeats`
        for name, run in contenders.items():
            best[name] = min(best[name], run())
    for name, seconds in best.items():
        print(f"{name}: {seconds:.2f} s", flush=True)


if __name__ == "__main__":
    main()
