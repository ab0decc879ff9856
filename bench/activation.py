"""FLAN-T5's gated-GELU with transformers' `gelu_new` (the tanh formula as eight elementwise ops)
against torch's one-kernel `gelu(approximate="tanh")`, side by side in one process.

    python -m bench.activation [--dtype float32] [--scale 1.0]

The policy `DetoxTrainer` builds, on the bench's real-size stand-ins, with the passes of
`bench.profile`: the rollout's decoding, the training forward + backward and the scoring pass.
The two activations alternate on the same model (its feed-forward blocks' `act` swapped), best of
`--repeats`.
"""

from __future__ import annotations

import time

import torch
from transformers.activations import ACT2FN

from flan_t5_detox.ml.generation import SamplingSettings, generate
from flan_t5_detox.ml.runtime import pick_dtype, set_threads

from . import ppo_passes
from .common import Sizes, command_line, loadavg, machine


def set_activation(model: torch.nn.Module, name: str) -> int:
    """Every feed-forward block's activation to ACT2FN[name]; how many were set."""
    blocks = [m for m in model.modules() if hasattr(m, "wi_0") and hasattr(m, "act")]
    for block in blocks:
        block.act = ACT2FN[name]
    return len(blocks)


def main(argv=None) -> int:
    parser = command_line("activation", __doc__)
    parser.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--scale", type=float, default=Sizes.scale)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    threads = set_threads(0)
    info = machine()
    print(f"CPU {info.get('cpu')}, flags {' '.join(info['simd_flags'])}, threads {threads}, load {loadavg()}")
    passes = ppo_passes.setup(Sizes(scale=args.scale), pick_dtype(args.dtype))
    budgets = [len(r) - 1 for r in passes.responses]
    sampling = SamplingSettings(min_length=max(budgets) + 1, top_k=0, top_p=1.0)

    def decoding() -> float:
        torch.manual_seed(0)
        start = time.perf_counter()
        generate(passes.trainer.policy, passes.tokenizer, passes.queries, budgets, sampling, len(budgets))
        return time.perf_counter() - start

    passes_by_name = {
        "decoding": decoding,
        "training forward + backward": lambda: ppo_passes.training(
            passes, ppo_passes.default_group_padding()
        ),
        "scoring": lambda: ppo_passes.scoring(passes, reuse=True),
    }
    activations = ("gelu_new", "gelu_pytorch_tanh")
    best = {(p, a): float("inf") for p in passes_by_name for a in activations}
    decoding()  # warm-up
    for _ in range(args.repeats):
        for name, run in passes_by_name.items():
            for activation in activations:
                set_activation(passes.trainer.policy, activation)
                best[name, activation] = min(best[name, activation], run())
    print(f"load {loadavg()}")
    print("| pass | gelu_new | gelu_pytorch_tanh | ratio |\n|---|---:|---:|---:|")
    for name in passes_by_name:
        old, new = best[name, activations[0]], best[name, activations[1]]
        print(f"| {name} | {old:.2f} s | {new:.2f} s | {old / new:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
