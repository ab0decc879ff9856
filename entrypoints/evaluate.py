"""`evaluate` (detox-evaluate): the SageMaker processing job that measures the detoxification.

Inputs (folders under <ml-root>/processing/input/):
    base_model        base model folder (else the `base_model_name` setting, from the hub)
    peft_checkpoint   the summarization LoRA adapter = the "before" model
    detoxified        the train job's model/ folder, or its model.tar.gz = the "after" model
    dataset           DialogSum-format data (else `dataset_name`); its test split is evaluated
    reward_model      the hate-speech classifier (else `reward_model_name`)
    training_output   optional: the train job's output/data folder or output.tar.gz (PPO curves)
Output: <ml-root>/processing/output/report/ (report.json, comparisons.csv, report.html, *.png).

Settings are the fields of `EvalConfig`: `--field-name VALUE` arguments (ContainerArguments),
or `DETOX_FIELD_NAME` environment variables (the processing job's Environment); arguments win.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import os
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from flan_t5_detox.config import EvalConfig, parse_settings
from flan_t5_detox.contract import DEFAULT_ML_ROOT, JobInputError, ProcessingJobEnvironment
from flan_t5_detox.job import run_job, setup_logging

log = logging.getLogger("flan_t5_detox.evaluate")

ENV_PREFIX = "DETOX_"
SETTINGS = [f.name for f in dataclasses.fields(EvalConfig)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detox-evaluate",
        allow_abbrev=False,
        description="Measure toxicity, reward and ROUGE of the summarizer before and after "
        "detoxification (SageMaker processing-job entrypoint). Inputs are read from "
        "<ml-root>/processing/input/{base_model,peft_checkpoint,detoxified,dataset,reward_model,"
        "training_output}; the report is written to <ml-root>/processing/output/report/.",
        epilog=f"Every setting can also come from an environment variable {ENV_PREFIX}<NAME> "
        f"(e.g. {ENV_PREFIX}NUM_SAMPLES=200); arguments win.",
    )
    parser.add_argument(
        "--ml-root", type=Path, default=DEFAULT_ML_ROOT, help="folder standing in for /opt/ml"
    )
    # The image is started as `evaluate ...`; accept and ignore that word.
    parser.add_argument("mode", nargs="?", help=argparse.SUPPRESS)
    defaults = EvalConfig()
    for name in SETTINGS:
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=argparse.SUPPRESS,
            metavar="VALUE",
            help=f"default: {getattr(defaults, name)!r}",
        )
    return parser


def collect_settings(args: argparse.Namespace, unknown: list[str], environ: dict[str, str]) -> EvalConfig:
    """Environment first, then arguments; unknown arguments are a clear error, not an argparse exit."""
    if args.mode not in (None, "evaluate"):
        unknown = [args.mode, *unknown]
    if unknown:
        flags = ["--" + s.replace("_", "-") for s in SETTINGS]
        hints = [
            f"{u!r}"
            + (f" (did you mean {close[0]}?)" if (close := difflib.get_close_matches(u, flags, 1)) else "")
            for u in unknown
        ]
        raise JobInputError("unknown argument(s): " + ", ".join(hints))
    values: dict[str, object] = {
        name: environ[ENV_PREFIX + name.upper()] for name in SETTINGS if ENV_PREFIX + name.upper() in environ
    }
    values.update({name: getattr(args, name) for name in SETTINGS if hasattr(args, name)})
    return parse_settings(EvalConfig, values)


def _required(env: ProcessingJobEnvironment, name: str, what: str) -> Path:
    path = env.input(name)
    if path is None:
        raise JobInputError(
            f"missing input {name!r} ({what}): expected it under {env.root}/processing/input/{name}"
        )
    return path


def evaluate(env: ProcessingJobEnvironment, config: EvalConfig, scratch: Path) -> int:
    # Heavy imports only once the settings are known to be good.
    from flan_t5_detox import archives, data, evaluation, models, report
    from flan_t5_detox.inputs import model_source
    from flan_t5_detox.metrics import MetricsLog
    from flan_t5_detox.rewards import RewardModel

    # 1. Every input and the data, before any model loads.
    peft_input = _required(env, "peft_checkpoint", "the summarization adapter, the 'before' model")
    peft_dir = archives.resolve_folder(peft_input, models.ADAPTER_CONFIG, "input 'peft_checkpoint'", scratch)
    detox_input = _required(
        env, "detoxified", "the train job's model/ folder or model.tar.gz, the 'after' model"
    )
    detox_dir = archives.resolve_folder(detox_input, models.ADAPTER_CONFIG, "input 'detoxified'", scratch)
    curves, training_summary = None, None
    if env.input("training_output") is not None:
        out_dir = archives.resolve_folder(
            env.input("training_output"), "metrics.jsonl", "input 'training_output'", scratch
        )
        try:
            curves = report.TrainingCurves.from_records(MetricsLog(out_dir / "metrics.jsonl").read())
            summary_path = out_dir / "training_summary.json"
            training_summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
        except (ValueError, KeyError, TypeError) as exc:
            raise JobInputError(f"input 'training_output': cannot read metrics.jsonl: {exc}") from exc
    base = model_source(env.input("base_model"), config.base_model_name, "base model")
    reward_source = model_source(env.input("reward_model"), config.reward_model_name, "reward model")
    records = data.load_records(env.input("dataset"), config.dataset_name)
    splits = data.prepare_splits(
        records, config.input_min_text_length, config.input_max_text_length, config.test_size
    )
    examples = evaluation.select_examples(splits.test, config.num_samples)

    # 2. Models: the reward model's labels, then both adapters must fit the base.
    threads = models.set_threads(config.num_threads)
    dtype = models.pick_dtype(config.dtype)
    reward_model = RewardModel(reward_source, config.reward_label, batch_size=config.generation_batch_size)
    reward_model.index_of(config.toxic_label)
    tokenizer = models.load_tokenizer(base)
    before_model = evaluation.load_before(base, peft_dir, dtype)
    after_model = evaluation.load_after(base, detox_dir, dtype)
    log.info(
        "dtype=%s threads=%d samples=%d of test split %d", dtype, threads, len(examples), len(splits.test)
    )

    # 3. Measure and report.
    result = evaluation.run(
        before_model, after_model, tokenizer, examples, len(splits.test), reward_model, config
    )
    context = report.ReportContext(
        settings=config,
        sources={
            "base_model": evaluation.describe_source(base),
            "before_adapter": evaluation.describe_source(peft_dir, origin=peft_input),
            "after_adapter": evaluation.describe_source(detox_dir, origin=detox_input),
            "reward_model": evaluation.describe_source(reward_source),
        },
        versions=_versions(),
        runtime={"dtype": str(dtype).replace("torch.", ""), "threads": threads, "cpu": _cpu_model()},
        training=curves,
        training_summary=training_summary,
    )
    written = report.write_report(env.output("report"), result, context)
    log.info("report: %s", ", ".join(str(p) for p in written))
    return 0


def _versions() -> dict[str, str]:
    names = ("flan-t5-detox", "torch", "transformers", "peft", "trl", "rouge_score", "scipy", "numpy")
    found = {"python": sys.version.split()[0]}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main(argv: list[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    setup_logging()

    def body() -> int:
        config = collect_settings(args, unknown, dict(os.environ))  # fails before any model loads
        env = ProcessingJobEnvironment.from_root(args.ml_root)
        scratch = Path(tempfile.mkdtemp(prefix="detox-evaluate-"))
        try:
            return evaluate(env, config, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    root = args.ml_root
    return run_job(body, [root / "output" / "message", root / "output" / "failure"])


if __name__ == "__main__":
    sys.exit(main())
