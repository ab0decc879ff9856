"""`evaluate` (detox-evaluate): the SageMaker processing job that measures the detoxification,
as a recipe.

    setup  settings and inputs (before any model loads), runtime, reward model, both summarizers
    run    the same test prompts through both (and every kept adapter), scored per dialogue
    save   processing/output/report/ (report.json, comparisons.csv, report.html, plots)

On N processing hosts (resourceconfig.json) each host measures its block of the test prompts
and writes `part-<host>.json` instead; `evaluate merge` (input `parts`: those files) then writes
the report, the same as one host's.

Inputs (under <ml-root>/processing/input/):
    base_model        base model folder (else the `base_model_name` setting, from the hub)
    peft_checkpoint   the summarization LoRA adapter = the "before" model
    detoxified        the train job's model/ folder, or its model.tar.gz = the "after" model
    dataset           DialogSum-format data (else `dataset_name`); its test split is evaluated
    reward_model      the hate-speech classifier (else `reward_model_name`)
    training_output   optional: the train job's output/data folder or output.tar.gz (PPO curves)

Settings are the fields of `EvalConfig`, from what SageMaker gives a processing job: its
ContainerArguments (`--field-name VALUE`) and its Environment (`DETOX_EVAL_FIELD_NAME`);
arguments win.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from flan_t5_detox.contract.environment import ProcessingJobEnvironment
from flan_t5_detox.contract.failure import JobInputError, run_job, setup_logging
from flan_t5_detox.contract.paths import ML_ROOT, REPORT_OUTPUT, MlPaths
from flan_t5_detox.contract.settings import EvalConfig, parse_settings

log = logging.getLogger("flan_t5_detox.evaluate")

ENV_PREFIX = "DETOX_EVAL_"  # distinct from the launcher's own DETOX_<NAME> settings
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
    parser.add_argument("--ml-root", type=Path, default=ML_ROOT, help="folder standing in for /opt/ml")
    # The image is started as `evaluate ...`; accept that word. `evaluate merge` builds the report of a
    # sharded evaluation from its hosts' parts (input `parts`).
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
    if args.mode not in (None, "evaluate", "merge"):
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


def evaluate(env: ProcessingJobEnvironment, config: EvalConfig, scratch: Path) -> int:
    # Heavy imports only once the settings are known to be good.
    from flan_t5_detox.contract.inputs import evaluation_inputs, named_as_given
    from flan_t5_detox.contract.outputs import check_writable
    from flan_t5_detox.ml import adapters, data, evaluation, report, runtime, shards
    from flan_t5_detox.ml.loading import load_tokenizer
    from flan_t5_detox.ml.measurements import Measurements
    from flan_t5_detox.ml.rewards import RewardModel

    # Setup: the report folder, inputs and data first, so bad input fails before the models load.
    check_writable(env.output(REPORT_OUTPUT), "the report folder")
    inputs = evaluation_inputs(env, config, scratch)
    curves, training_summary = report.read_training_output(inputs.training_output)
    test = data.load_splits(inputs.dataset, config).test
    examples = evaluation.select_examples(test, config.num_samples)
    # On one host: all of them. Blocks are whole generation batches.
    positions = shards.block(len(examples), env.host_index, len(env.hosts), config.generation_batch_size)
    machine = runtime.setup(config.dtype, config.num_threads)
    reward_model = RewardModel(
        inputs.reward_model, config.reward_label, batch_size=config.generation_batch_size
    )
    reward_model.index_of(config.toxic_label)
    tokenizer = load_tokenizer(inputs.base_model)
    with named_as_given(inputs):
        before = adapters.load_merged(inputs.base_model, inputs.before_adapter, machine.dtype)
        after = adapters.load_merged(inputs.base_model, inputs.after_adapter, machine.dtype)
    log.info(
        "dtype=%s threads=%d samples=%d of test split %d; this host (%s, %d of %d) measures %d",
        machine.dtype_name,
        machine.threads,
        len(examples),
        len(test),
        env.current_host,
        env.host_index + 1,
        len(env.hosts),
        len(positions),
    )

    # Run: this host's dialogues through both models, then every adapter the train job kept.
    mine = [examples[p] for p in positions]

    def measure(model):
        if not mine:  # more hosts than generation batches: this one's part is empty
            return evaluation.Side.empty()
        return evaluation.evaluate_model(model, tokenizer, mine, reward_model, config, positions)

    kept = adapters.step_adapters(inputs.after_adapter)
    info = adapters.read_adapter_info(inputs.after_adapter)  # kept steps come with it: our train job's
    final_step = int(info["ppo_steps"]) if kept and info else None
    measured = Measurements(
        examples=mine,
        positions=positions,
        sample_size=len(examples),
        test_split_size=len(test),
        before=measure(before),
        after=measure(after),
        steps={
            step: measure(adapters.load_merged(inputs.base_model, folder, machine.dtype))
            for step, folder in kept.items()
            if final_step is not None and step != final_step
        },
        final_step=final_step,
    )

    # Save: the report, or on one of several hosts this host's part of it.
    context = report.ReportContext(
        settings=config,
        sources={
            "base_model": evaluation.describe_source(inputs.base_model),
            "before_adapter": evaluation.describe_source(
                inputs.before_adapter, inputs.as_given["before_adapter"]
            ),
            "after_adapter": evaluation.describe_source(
                inputs.after_adapter, inputs.as_given["after_adapter"]
            ),
            "reward_model": evaluation.describe_source(inputs.reward_model),
        },
        versions=runtime.versions(),
        runtime=machine.describe(),
        training=curves,
        training_summary=training_summary,
    )
    if len(env.hosts) > 1:
        part = shards.write_part(
            env.output(REPORT_OUTPUT), env.current_host, measured, report.context_json(context)
        )
        log.info("part: %s (merge all hosts' parts with `evaluate merge`)", part)
        return 0
    return report_measurements(env, measured, context)


def merge(env: ProcessingJobEnvironment) -> int:
    """`evaluate merge`: the report of a sharded evaluation, from the hosts' parts (input `parts`)."""
    from flan_t5_detox.contract.outputs import check_writable
    from flan_t5_detox.ml import report, shards

    check_writable(env.output(REPORT_OUTPUT), "the report folder")
    parts = env.input("parts")
    if parts is None:
        expected = MlPaths(env.root).processing_input("parts")
        raise JobInputError(
            f"missing input 'parts' (the sharded evaluation's report output): expected {expected}"
        )
    measured, context = shards.read_parts(parts)
    return report_measurements(env, measured, report.context_from_json(context))


def report_measurements(env: ProcessingJobEnvironment, measured, context) -> int:
    """Statistics, the trade-off curve and the report files, from every dialogue's measurements."""
    from flan_t5_detox.ml import evaluation, report

    config = context.settings
    result = evaluation.assemble(
        measured.examples, measured.test_split_size, measured.before, measured.after, config
    )
    if measured.final_step is not None:
        curves = context.training
        kl = dict(zip(curves.step, curves.kl)) if curves else None
        result.curve = evaluation.tradeoff_curve(result, measured.steps, measured.final_step, config, kl)
    written = report.write_report(env.output(REPORT_OUTPUT), result, context)
    log.info("report: %s", ", ".join(str(p) for p in written))
    return 0


def main(argv: list[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    setup_logging()

    def body() -> int:
        if args.mode == "merge":
            return merge(ProcessingJobEnvironment.from_root(args.ml_root))
        config = collect_settings(args, unknown, dict(os.environ))  # fails before any model loads
        env = ProcessingJobEnvironment.from_root(args.ml_root)
        scratch = Path(tempfile.mkdtemp(prefix="detox-evaluate-"))
        try:
            return evaluate(env, config, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    paths = MlPaths(args.ml_root)
    return run_job(body, [paths.message, paths.failure])


if __name__ == "__main__":
    sys.exit(main())
