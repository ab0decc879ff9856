"""glibc malloc settings vs defaults for one PPO training forward + backward, alternating processes.

    python -m bench.allocator          # after `python -m bench.run` has built bench/results/fixtures

With autograd every activation of a training pass is a fresh allocation; glibc hands large ones
back to the kernel on free, so the next pass page-faults them in again. The settings below
(the image's ENV) keep freed memory in the process. They must be set before the process
starts, hence one process per measurement.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from .run import RESULTS

TUNED = {
    "MALLOC_MMAP_THRESHOLD_": "4294967296",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "MALLOC_TOP_PAD_": "1073741824",
}


def with_image_settings() -> None:
    """Restart this process under the image's settings, unless it already runs with them: the jobs
    run with them, so a side-by-side benchmark of job code should too."""
    if any(os.environ.get(k) != v for k, v in TUNED.items()):
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **TUNED})


def worker() -> None:
    import torch

    from flan_t5_detox.ml.adapters import load_merged, read_lora_config
    from flan_t5_detox.ml.policy import build_policy
    from flan_t5_detox.ml.runtime import set_threads

    set_threads(0)
    fixtures = Path(RESULTS) / "fixtures"
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


def main(rounds: int = 2) -> None:
    for _ in range(rounds):
        for name, env in (("glibc defaults", {}), ("image settings", TUNED)):
            out = subprocess.run(
                [sys.executable, "-m", "bench.allocator", "--worker"],
                env={**os.environ, **env}, capture_output=True, text=True, check=True,
                cwd=Path(__file__).parent.parent,
            )  # fmt: skip
            forward, backward = out.stdout.split()[-2:]
            print(f"{name}: training forward {forward} s, backward {backward} s (4 x 180 + 350 tokens)")


if __name__ == "__main__":
    worker() if "--worker" in sys.argv else main()
