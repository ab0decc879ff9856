"""glibc malloc settings vs defaults for one PPO training forward + backward, alternating processes.

    python -m bench.allocator          # after `python -m bench.run` has built bench/results/fixtures

With autograd every activation of a training pass is a fresh allocation; glibc hands large ones
back to the kernel on free, so the next pass page-faults them in again. The image's malloc
settings (container/job.env) keep freed memory in the process. glibc reads them when a process
starts, hence one process per measurement.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from .common import RESULTS, command_line, image_malloc_settings


def worker() -> None:
    import torch

    from flan_t5_detox.ml.adapters import load_merged, read_lora_config
    from flan_t5_detox.ml.policy import build_policy
    from flan_t5_detox.ml.runtime import set_threads

    set_threads(0)
    fixtures = RESULTS / "fixtures"
    summarizer = load_merged(fixtures / "base_model", fixtures / "peft_checkpoint", torch.float32)
    policy = build_policy(summarizer, read_lora_config(fixtures / "peft_checkpoint"), 0)
    torch.manual_seed(0)
    queries, responses = torch.randint(5, 30000, (4, 180)), torch.randint(5, 30000, (4, 350))
    best_forward = best_backward = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        logits, _, values = policy(input_ids=queries, decoder_input_ids=responses)
        logprobs = torch.log_softmax(logits[:, :-1], -1).gather(2, responses[:, 1:, None])
        loss = values.mean() - logprobs.mean()
        forward = time.perf_counter() - start
        loss.backward()
        best_forward = min(best_forward, forward)
        best_backward = min(best_backward, time.perf_counter() - start - forward)
        policy.zero_grad()
    print(f"{best_forward:.2f} {best_backward:.2f}")


def compare(rounds: int = 2) -> None:
    """Alternating processes, `rounds` of each: the glibc defaults, then the image's settings."""
    # The defaults: none of the image's settings, even where this process was started with them.
    settings = image_malloc_settings()
    defaults = {k: v for k, v in os.environ.items() if k not in settings}
    for _ in range(rounds):
        for name, env in (("glibc defaults", defaults), ("image settings", {**defaults, **settings})):
            out = subprocess.run(
                [sys.executable, "-m", "bench.allocator", "--worker"],
                env=env, capture_output=True, text=True, check=True,
                cwd=Path(__file__).parent.parent,
            )  # fmt: skip
            forward, backward = out.stdout.split()[-2:]
            print(f"{name}: training forward {forward} s, backward {backward} s (4 x 180 + 350 tokens)")


def main(argv=None) -> None:
    parser = command_line("allocator", __doc__)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    worker() if parser.parse_args(argv).worker else compare()


if __name__ == "__main__":
    main()
