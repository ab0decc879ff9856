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
    judge_model       optional: an independent toxicity classifier the reward never saw (else
                      `judge_model_name`; neither = no judge); its toxic class is `judge_label`
    training_output   optional: the train job's output/data folder or output.tar.gz (PPO curves)

Settings are the fields of `EvalConfig`, from what SageMaker gives a processing job: its
ContainerArguments (`--field-name VALUE`) and its Environment (`DETOX_EVAL_FIELD_NAME`);
arguments win.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from flan_t5_detox.contract.environment import ProcessingJobEnvironment
from flan_t5_detox.contract.failure import JobInputError, run_job, setup_logging
from flan_t5_detox.contract.memory import running
from flan_t5_detox.contract.paths import ML_ROOT, REPORT_OUTPUT, MlPaths
from flan_t5_detox.contract.preflight import memory_settings
from flan_t5_detox.contract.settings import EvalConfig, did_you_mean, parse_settings

if TYPE_CHECKING:
    from flan_t5_detox.ml.measurements import Measurements

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
        hints = [did_you_mean(u, flags) for u in unknown]
        raise JobInputError("unknown argument(s): " + ", ".join(hints))
    values: dict[str, object] = {
        name: environ[ENV_PREFIX + name.upper()] for name in SETTINGS if ENV_PREFIX + name.upper() in environ
    }
    values.update({name: getattr(args, name) for name in SETTINGS if hasattr(args, name)})
    return parse_settings(EvalConfig, values)


class EvaluateRecipe:
    """One host of the evaluate job: `setup`, `measure`, `save`."""

    def __init__(self, env: ProcessingJobEnvironment, config: EvalConfig, scratch: Path):
        self.env, self.config, self.scratch = env, config, scratch

    def setup(self) -> None:
        """The report folder, inputs and data first, so bad input fails before the models load."""
        from flan_t5_detox.contract import preflight
        from flan_t5_detox.contract.inputs import evaluation_inputs, named_as_given
        from flan_t5_detox.contract.outputs import check_writable
        from flan_t5_detox.ml import adapters, data, evaluation, report, runtime, shards
        from flan_t5_detox.ml.loading import load_tokenizer
        from flan_t5_detox.ml.rewards import RewardModel

        env, config = self.env, self.config
        check_writable(env.output(REPORT_OUTPUT), "the report folder")
        self.inputs = inputs = evaluation_inputs(env, config, self.scratch)
        self.curves, self.training_summary = report.read_training_output(inputs.training_output)
        self.test = data.load_splits(inputs.dataset, config).test
        self.examples = evaluation.select_examples(self.test, config.num_samples)
        # On one host: all of them. Blocks are whole generation batches.
        self.positions = shards.block(
            len(self.examples), env.host_index, len(env.hosts), config.generation_batch_size
        )
        self.machine = runtime.setup(config.dtype, config.num_threads)
        longest = max((len(example.prompt) for example in self.examples), default=0)
        preflight.check_evaluation(
            config, inputs, env.output(REPORT_OUTPUT), len(self.positions),
            len(adapters.step_adapters(inputs.after_adapter)), longest, self.machine.weight_bytes,
        )  # fmt: skip
        self.reward_model = RewardModel(
            inputs.reward_model, config.reward_label, batch_size=config.generation_batch_size
        )
        self.reward_model.index_of(config.toxic_label)
        self.judge = None
        if inputs.judge_model is not None:
            self.judge = RewardModel(
                inputs.judge_model, config.judge_label, batch_size=config.generation_batch_size, role="judge"
            )
        self.tokenizer = load_tokenizer(inputs.base_model)
        with named_as_given(inputs):
            self.before = adapters.load_merged(inputs.base_model, inputs.before_adapter, self.machine.dtype)
            self.after = adapters.load_merged(inputs.base_model, inputs.after_adapter, self.machine.dtype)
        log.info(
            "dtype=%s threads=%d samples=%d of test split %d; this host (%s, %d of %d) measures %d",
            self.machine.dtype_name, self.machine.threads, len(self.examples), len(self.test),
            env.current_host, env.host_index + 1, len(env.hosts), len(self.positions),
        )  # fmt: skip

    def measure(self) -> Measurements:
        """This host's dialogues through both models, then every adapter the train job kept."""
        from flan_t5_detox.contract.progress import Progress
        from flan_t5_detox.ml import adapters
        from flan_t5_detox.ml.measurements import Measurements

        kept = adapters.step_adapters(self.inputs.after_adapter)
        info = adapters.read_adapter_info(
            self.inputs.after_adapter
        )  # kept steps come with it: our train job's
        final_step = int(info["ppo_steps"]) if kept and info else None
        steps = {
            step: folder for step, folder in kept.items() if final_step is not None and step != final_step
        }
        self.progress, self.measured = Progress(2 + len(steps), "model"), 0  # models measured so far
        return Measurements(
            examples=[self.examples[p] for p in self.positions],
            positions=self.positions,
            sample_size=len(self.examples),
            test_split_size=len(self.test),
            before=self._measure(self.before, "before"),
            after=self._measure(self.after, "after"),
            steps={
                step: self._measure(
                    adapters.load_merged(self.inputs.base_model, folder, self.machine.dtype), f"step {step}"
                )
                for step, folder in steps.items()
            },
            final_step=final_step,
        )

    def _measure(self, model, name: str):
        """k samples per dialogue of this host's block, perplexity under the starting summarizer;
        `name` says which model in the progress line."""
        from flan_t5_detox.ml import evaluation

        scorers = evaluation.Scorers(self.reward_model, self.judge, self.before)
        if not self.positions:  # more hosts than generation batches: this one's part is empty
            return evaluation.Side.empty(scorers.names(), self.config.samples_per_prompt)
        mine = [self.examples[p] for p in self.positions]
        side = evaluation.evaluate_model(
            model, self.tokenizer, mine, self.reward_model, self.config, self.positions,
            judge=self.judge, reference=self.before,
        )  # fmt: skip
        self.measured += 1
        log.info("measured %s: %s", name, self.progress.done(self.measured))
        return side

    def context(self):
        """How the measurements were made, for the report."""
        from flan_t5_detox.ml import report, runtime, sources

        inputs = self.inputs
        return report.ReportContext(
            settings=self.config,
            sources={
                "base_model": sources.describe_source(inputs.base_model),
                "before_adapter": sources.describe_source(
                    inputs.before_adapter, inputs.as_given["before_adapter"]
                ),
                "after_adapter": sources.describe_source(
                    inputs.after_adapter, inputs.as_given["after_adapter"]
                ),
                "reward_model": sources.describe_source(inputs.reward_model),
                **(
                    {"judge_model": sources.describe_source(inputs.judge_model)}
                    if inputs.judge_model is not None
                    else {}
                ),
            },
            versions=runtime.versions(),
            runtime=self.machine.describe(),
            training=self.curves,
            training_summary=self.training_summary,
        )

    def save(self, measured: Measurements) -> int:
        """The report, or on one of several hosts this host's part of it."""
        from flan_t5_detox.ml import report, shards

        context = self.context()
        if len(self.env.hosts) > 1:
            output = self.env.output(REPORT_OUTPUT)
            part = shards.write_part(output, self.env.current_host, measured, report.context_json(context))
            log.info("part: %s (merge all hosts' parts with `evaluate merge`)", part)
            if self.config.wait_for_hosts:
                self.wait_for_hosts()
            return 0
        return report_measurements(self.env, measured, context)

    def wait_for_hosts(self) -> None:
        """`wait_for_hosts`: stay until every host has written its part. A host that waits in
        vain says so and still succeeds: its part is written, and the merge refuses parts that
        do not cover the sample."""
        from flan_t5_detox.contract.cluster import rendezvous
        from flan_t5_detox.ml import distributed

        seconds = self.config.wait_for_hosts
        hosts = len(self.env.hosts)
        log.info("waiting up to %g s for the other %d host(s) to write their parts", seconds, hosts - 1)
        try:
            distributed.wait_for_all(rendezvous(self.env, 1, os.environ), seconds)
        except distributed.RendezvousFailed as exc:
            log.warning("the hosts did not all meet: %s", exc)
            return
        log.info("all %d hosts have written their parts", hosts)


def evaluate(env: ProcessingJobEnvironment, config: EvalConfig, scratch: Path) -> int:
    recipe = EvaluateRecipe(env, config, scratch)
    recipe.setup()
    return recipe.save(recipe.measure())


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
    from flan_t5_detox.ml import evaluation, report, tradeoff

    config = context.settings
    result = evaluation.assemble(
        measured.examples, measured.test_split_size, measured.before, measured.after, config
    )
    if measured.final_step is not None:
        curves = context.training
        kl = dict(zip(curves.step, curves.kl)) if curves else None
        result.curve = tradeoff.tradeoff_curve(result, measured.steps, measured.final_step, config, kl)
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
        # A marker in output/ while the job runs: a SIGKILL (out of memory) leaves it behind.
        try:
            with running(paths.failure.parent, memory_settings(config)):
                return evaluate(env, config, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    paths = MlPaths(args.ml_root)
    return run_job(body, [paths.message, paths.failure])


if __name__ == "__main__":
    sys.exit(main())
