"""`detox-demo`: the whole pipeline offline, end to end, in a few minutes on a laptop CPU.

1. takes the embedded default: tiny stand-ins for FLAN-T5, the summarization adapter, the
   reward model and an independent toxicity judge, shipped as files and checked against their
   manifest (flan_t5_detox.fixtures.embedded; no model hub needed),
2. lays out /opt/ml-like folders exactly as SageMaker would (flan_t5_detox.contract.layout),
3. runs the real train job, then the real evaluate job on its model/ and output/data,
4. prints where report.html is.

The jobs are the production entrypoints; only the hyperparameters are sized for
tiny models (short responses, a learning rate that moves a 2-layer model in a
few steps).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

MARKER = ".detox-demo"  # lets a rerun clear its own earlier output, and nothing else

# Sized for the tiny models; every other setting keeps the job's default.
TRAIN_HYPERPARAMETERS = {
    "batch_size": 32,
    "mini_batch_size": 8,
    "learning_rate": 3e-3,
    # Budgets above the summaries' length, so responses end at EOS, as the real model's do.
    "output_min_length": 40,
    "output_max_length": 60,
    "dtype": "float32",
    # 2-layer models gain nothing from intra-op threads, and on a busy machine OpenMP threads
    # that wait for each other make torch many times slower.
    "num_threads": 1,
}
# Held-out evaluation on prompts held out of the training split, and model/ gets the best
# evaluated step (`keep_best`); the evaluate job then measures it on the test split.
WATCH_HYPERPARAMETERS = {"eval_samples": 64, "keep_best": True}
KEPT_ADAPTERS = 4  # adapters kept along the way (save_adapter_every), for the report's trade-off curve
# The evaluate job keeps its defaults (whole test split of the sample, 100 new tokens, 4 samples
# per prompt, the embedded judge); fp32 so the demo gives the same numbers on every CPU.
EVALUATE_ARGUMENTS = ["--dtype", "float32", "--num-threads", "1", "--samples-per-prompt", "4"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="detox-demo",
        description="Offline demo: tiny models, the shipped DialogSum sample, the real train job "
        "and the real evaluate job, then a report.",
    )
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for everything")
    parser.add_argument("--steps", type=int, default=20, help="PPO steps of the train job (default 20)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    return args


def prepare_out(out: Path) -> None:
    """Use an empty folder, or one an earlier demo made (cleared so the train job starts fresh)."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise SystemExit(f"{out} is not empty and was not made by detox-demo; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by detox-demo; rerunning the demo deletes this folder's contents\n")


def run_jobs(out: Path, steps: int) -> int:
    """The train job, then the evaluate job on what it made, in /opt/ml-style folders under `out`."""
    from flan_t5_detox.contract.layout import write_processing_layout, write_training_layout
    from flan_t5_detox.fixtures.embedded import EMBEDDED_DIR, embedded_default

    from . import evaluate, train

    print(f"[demo] embedded default models: {EMBEDDED_DIR}, checked against its manifest", flush=True)
    models = embedded_default()
    inputs = models.channels()
    every = max(1, steps // (KEPT_ADAPTERS + 1))
    # Held-out evaluation on the steps whose adapters are kept, so the best is one of them.
    settings = {
        **TRAIN_HYPERPARAMETERS,
        **WATCH_HYPERPARAMETERS,
        "max_ppo_steps": steps,
        "save_adapter_every": every,
        "eval_every": every,
    }
    train_root = write_training_layout(out / "train", inputs, settings)
    print(f"[demo] train job: detox-train --ml-root {train_root}", flush=True)
    code = train.main(["--ml-root", str(train_root)])
    if code != 0:
        print(f"[demo] the train job failed (exit {code}): see {train_root / 'output' / 'failure'}")
        return code
    print(kept_step_line(train_root / "model"), flush=True)

    eval_root = write_processing_layout(
        out / "evaluate",
        {
            **models.evaluation_inputs(),
            "detoxified": train_root / "model",
            "training_output": train_root / "output" / "data",
        },
    )
    eval_args = ["evaluate", "--ml-root", str(eval_root), *EVALUATE_ARGUMENTS]
    print(f"[demo] evaluate job: detox-evaluate {' '.join(eval_args)}", flush=True)
    code = evaluate.main(eval_args)
    if code != 0:
        print(f"[demo] the evaluate job failed (exit {code}): see {eval_root / 'output' / 'failure'}")
    return code


def kept_step_line(model_dir: Path) -> str:
    """Which step model/ holds and why, from its adapter_info.json."""
    from flan_t5_detox.ml.adapters import read_adapter_info

    info = read_adapter_info(model_dir) or {}
    chosen = info.get("chosen")
    if not chosen:
        return f"[demo] model/ holds the adapter of the last step, {info.get('ppo_steps')}"
    figures, start = chosen["figures"], chosen["start"]
    return (
        f"[demo] kept step {chosen['step']} of {chosen['last_step']}: held-out toxicity "
        f"{figures['heldout_toxicity']:.3f} (start {start['heldout_toxicity']:.3f}), ROUGE-L "
        f"{figures['heldout_rouge_l']:.3f} (start {start['heldout_rouge_l']:.3f}), KL "
        f"{figures['heldout_kl']:.3f}; rule: {chosen['rule']}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Offline by construction: nothing below may reach for the hub.
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    out = args.out.resolve()
    prepare_out(out)
    started = time.perf_counter()
    torch.set_num_threads(1)  # as the jobs' num_threads: tiny models, busy machines
    code = run_jobs(out, args.steps)
    if code == 0:
        print(f"[demo] done in {time.perf_counter() - started:.0f} s")
        print(f"[demo] report: {out / 'evaluate' / 'processing' / 'output' / 'report' / 'report.html'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
