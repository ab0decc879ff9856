"""Benchmark: what each extra sample per prompt costs the evaluate job, at real size.

    python -m bench.eval_samples                      # 8 prompts, k = 1 then k = 3, 100 new tokens
    python -m bench.eval_samples --prompts 4 --k 1 2  # quicker

The evaluate job's own `evaluation.evaluate_model`, on flan-t5-base and roberta-base
architectures with random weights (`bench.fixtures`; the reward model also serves as the
judge, so a sample is scored as with a judge), in one process, k values in turn. Random weights
rarely emit EOS, so every sample runs its whole budget of new tokens: the cost of a sample at
`--max-new-tokens`, an upper bound for a trained summarizer that stops earlier. The cost of one
extra sample per prompt and model is the slope of the time against k.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from .common import RESULTS, Sizes, command_line, machine, make_workload


def parse_args(argv=None):
    p = command_line("eval_samples", __doc__)
    p.add_argument("--prompts", type=int, default=8, help="test prompts per run")
    p.add_argument("--k", type=int, nargs="+", default=[1, 3], help="samples per prompt to time, in turn")
    p.add_argument("--max-new-tokens", type=int, default=100, help="the evaluate job's default")
    p.add_argument(
        "--fixtures", type=Path, default=RESULTS / "fixtures", help="real-size models (built once)"
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from flan_t5_detox.contract.settings import EvalConfig
    from flan_t5_detox.ml import evaluation, runtime
    from flan_t5_detox.ml.adapters import load_merged
    from flan_t5_detox.ml.data import Example
    from flan_t5_detox.ml.loading import load_tokenizer
    from flan_t5_detox.ml.rewards import RewardModel

    from . import fixtures as bench_fixtures

    built = bench_fixtures.build(args.fixtures)
    workload = make_workload(built, Sizes(eval_samples=args.prompts))
    machine_setup = runtime.setup("float32", 0)
    tokenizer = load_tokenizer(workload.base_model)
    model = load_merged(workload.base_model, Path(workload.peft_checkpoint), machine_setup.dtype)
    reward = RewardModel(workload.reward_model, "nothate", batch_size=16)
    judge = RewardModel(workload.reward_model, "hate", batch_size=16, role="judge")
    examples = [Example(str(i), p, "a reference summary", p) for i, p in enumerate(workload.eval_prompts)]
    # min_length = the budget: every sample runs its whole budget, whatever the random weights say.
    base = EvalConfig(max_new_tokens=args.max_new_tokens, min_length=args.max_new_tokens, judge_label="hate")
    runs = []
    for k in args.k:
        config = dataclasses.replace(base, samples_per_prompt=k)
        started = time.perf_counter()
        side = evaluation.evaluate_model(
            model, tokenizer, examples, reward, config, judge=judge, reference=model
        )
        seconds = time.perf_counter() - started
        runs.append(
            {"k": k, "seconds": seconds, "generate": side.generate_seconds, "score": side.score_seconds}
        )
        print(
            f"k={k}: {seconds:.1f} s for {len(examples)} prompts ({seconds / len(examples) / k:.2f} s/sample)"
        )
    first, last = runs[0], runs[-1]
    per_extra = (last["seconds"] - first["seconds"]) / (last["k"] - first["k"]) / len(examples)
    result = {
        "machine": machine(),
        "threads": machine_setup.threads,
        "dtype": machine_setup.dtype_name,
        "prompts": len(examples),
        "max_new_tokens": args.max_new_tokens,
        "runs": runs,
        "seconds_per_extra_sample_per_prompt_and_model": per_extra,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "eval_samples.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"one extra sample per prompt and model: {per_extra:.2f} s ({path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
