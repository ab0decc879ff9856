"""The decoding kernel (flan_t5_detox/small_gemm.c) against torch, side by side in one process.

    python -m bench.small_gemm            # after `python -m bench.run` has built bench/results/fixtures

1. Products: the 12 decoder layers' weights plus the LM head of flan-t5-base (495 MB, so every
   weight comes from DRAM, as in decoding), at 1-32 rows: torch's `F.linear`, torch's `W @ x.T`,
   and the kernel itself (`small_gemm.product`). Best of three, alternating.
2. Whole generations: the bench's rollout (the policy, 16 prompts, budgets 109..392) and an
   evaluation batch (the merged summarizer, 16 x 100 tokens). Decoding as before (torch's
   products, weight first from 13 rows, LoRA layers with their own forward) against now (the
   kernel, LoRA layers with their merged weight).
   Best of two, alternating, same seed; says whether the responses came out the same.

Runs under the job image's glibc malloc settings (bench/allocator.py), as the jobs do.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from flan_t5_detox import decoder, generation, models, small_gemm

from .allocator import with_image_settings
from .run import RESULTS

ROWS = (1, 2, 4, 8, 12, 16, 24, 32)


def _decoder_weights() -> list[torch.Tensor]:
    layer = [(768, 768)] * 6 + [(2048, 768)] * 2 + [(768, 2048)]  # self q k v o, cross q o, FFN
    return [torch.randn(shape) for _ in range(12) for shape in layer] + [torch.randn(32128, 768)]


def _weight_first(x, weight):
    return torch.mm(weight, x.t()).t().contiguous()


def products() -> list[dict]:
    torch.manual_seed(0)
    weights = _decoder_weights()
    gigabytes = sum(w.numel() for w in weights) * 4 / 1e9
    paths = {"F.linear": torch.nn.functional.linear, "W @ x.T": _weight_first, "kernel": small_gemm.product}
    rows_out = []
    for rows in ROWS:
        inputs = {k: torch.randn(rows, k) for k in (768, 2048)}

        def sweep(product, inputs=inputs):
            start = time.perf_counter()
            for w in weights:
                product(inputs[w.shape[1]], w)
            return time.perf_counter() - start

        best = dict.fromkeys(paths, float("inf"))
        for _ in range(3):
            for name, product in paths.items():
                best[name] = min(best[name], sweep(product))
        torch_best = min(best["F.linear"], best["W @ x.T"])
        flops = 2 * rows * gigabytes / 4 * 1e9
        rows_out.append(
            {
                "rows": rows,
                **{f"{k} ms": round(v * 1e3, 1) for k, v in best.items()},
                "kernel vs torch's best": round(torch_best / best["kernel"], 2),
                "kernel GB/s": round(gigabytes / best["kernel"], 1),
                "kernel GFLOP/s": round(flops / best["kernel"] / 1e9, 1),
            }
        )
        print(rows_out[-1], flush=True)
    return rows_out


@contextmanager
def previous_decoding():
    """Decoding as it was before the kernel: torch's products, LoRA layers with their own forward."""
    takes, weight = small_gemm.takes, decoder._decoding_weight
    small_gemm.takes = lambda x, w: False
    decoder._decoding_weight = lambda m: m.weight if type(m) is torch.nn.Linear and m.bias is None else None
    try:
        yield
    finally:
        small_gemm.takes, decoder._decoding_weight = takes, weight


def generations(policy, tokenizer, budgets: list[int], repeats: int = 2) -> dict:
    torch.manual_seed(0)
    queries = [torch.randint(5, 30000, (int(n),)) for n in torch.randint(59, 187, (len(budgets),))]
    settings = generation.SamplingSettings(min_length=max(budgets) + 1)  # every row runs to its budget
    ways = {"before": previous_decoding, "kernel": nullcontext}
    best, responses = dict.fromkeys(ways, float("inf")), {}
    for _ in range(repeats):
        for name, way in ways.items():
            torch.manual_seed(1)
            with way():
                start = time.perf_counter()
                responses[name] = generation.generate(policy, tokenizer, queries, budgets, settings)
                best[name] = min(best[name], time.perf_counter() - start)
    same = sum(torch.equal(a, b) for a, b in zip(responses["before"], responses["kernel"]))
    return {
        **{f"{k} s": round(v, 2) for k, v in best.items()},
        "speed-up": round(best["before"] / best["kernel"], 2),
        "same responses": f"{same} of {len(budgets)}",
    }


def main() -> None:
    with_image_settings()
    threads = models.set_threads(0)
    print(f"threads {threads}; kernel available: {small_gemm.available()}")
    print("products, 12 decoder layers + LM head (495 MB):")
    products()
    fixtures = Path(RESULTS) / "fixtures"
    summarizer = models.load_summarizer(fixtures / "base_model", fixtures / "peft_checkpoint", torch.float32)
    policy = models.build_policy(summarizer, models.read_lora_config(fixtures / "peft_checkpoint"), seed=0)
    with torch.no_grad():  # a trained-looking detox adapter, so the LoRA layers really take part
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    tokenizer = models.load_tokenizer(fixtures / "base_model")
    torch.manual_seed(0)
    rollout_budgets = torch.randint(109, 393, (16,)).tolist()
    print(
        "rollout, 16 prompts, budgets 109..392:", generations(policy, tokenizer, rollout_budgets), flush=True
    )
    del policy, summarizer  # the evaluation decodes with the adapter merged: plain projections only
    summarizer = models.load_summarizer(fixtures / "base_model", fixtures / "peft_checkpoint", torch.float32)
    print("evaluation batch, 16 x 100 tokens:", generations(summarizer, tokenizer, [100] * 16), flush=True)


if __name__ == "__main__":
    main()
