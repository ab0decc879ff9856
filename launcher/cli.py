"""`detox-launch`: submit, watch and fetch the detox jobs on SageMaker, or run them locally."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import commands
from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, LaunchError, explain_aws
from .options import FIELDS, Options, parse_pairs, resolve, setting_type

PROG = "detox-launch"
GIVEN = argparse.SUPPRESS  # a flag not given leaves no attribute, so env and config file apply

AWS = ("profile", "region", "endpoint_url")
WHERE = ("image", "role", "bucket", "prefix", "output_path", "job_name")
RESOURCES = ("instance_type", "instance_count", "volume_size", "max_run")
TRAIN = (
    "spot",
    "max_wait",
    "checkpoint_s3_uri",
    "tensorboard_s3_uri",
    "base_model",
    "peft_checkpoint",
    "dataset",
    "reward_model",
)
EVAL = (
    "base_model",
    "peft_checkpoint",
    "dataset",
    "reward_model",
    "judge_model",
    "detoxified",
    "training_output",
    "train_job",
)
WAIT = ("poll", "timeout", "logs")
TABLE_FLAGS = {  # flag -> (Options table, metavar, help, decode values like the jobs do)
    "--hp": ("hyperparameters", "NAME=VALUE", "train hyperparameter (a TrainConfig field); repeatable", True),
    "--eval": ("evaluate", "NAME=VALUE", "evaluate setting (an EvalConfig field); repeatable", True),
    "--tag": ("tags", "KEY=VALUE", "tag the job; repeatable", False),
    "--env": ("environment", "KEY=VALUE", "environment variable for the job; repeatable", False),
}


EXAMPLES = """examples:
  detox-launch upload ./peft-dialogue-summary-checkpoint s3://BUCKET/inputs/peft/
  detox-launch train --image ECR_IMAGE --role ROLE_ARN --bucket BUCKET \\
      --peft-checkpoint s3://BUCKET/inputs/peft/ --hp max_ppo_steps=20 --wait
  detox-launch evaluate --image ECR_IMAGE --role ROLE_ARN --bucket BUCKET \\
      --train-job detox-train-... --peft-checkpoint s3://BUCKET/inputs/peft/ --eval num_samples=300 --wait
  detox-launch fetch detox-evaluate-... --out ./report
  detox-launch pipeline --config detox.toml --out ./report      # all of the above in one go
  detox-launch local train --image flan-t5-detox:latest --peft-checkpoint ./peft --work-dir ./ml
  detox-launch local train --no-docker --peft-checkpoint ./peft --work-dir ./ml
exit codes: 0 completed, 1 job failed, 2 bad input, 3 job stopped, 4 --timeout reached"""


def _add(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    defaults = Options()
    for name in names:
        meta = FIELDS[name].metadata
        default = getattr(defaults, name)
        help_text = meta["help"] + (f" (default: {default})" if default not in (None, "") else "")
        flag = "--" + name.replace("_", "-")
        if setting_type(name) is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=GIVEN, help=help_text)
        else:
            parser.add_argument(
                flag, type=setting_type(name), default=GIVEN, metavar=name.upper(), help=help_text
            )


def _tables(parser: argparse.ArgumentParser, *flags: str) -> None:
    for flag in flags:
        _, metavar, help_text, _ = TABLE_FLAGS[flag]
        parser.add_argument(flag, action="append", default=GIVEN, metavar=metavar, help=help_text)


def _common() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("configuration")
    group.add_argument(
        "--config", default=GIVEN, metavar="FILE", help="settings file, .toml or .json (DETOX_CONFIG)"
    )
    _add(group, AWS)
    group.add_argument(
        "--debug", action="store_true", default=GIVEN, help="show tracebacks of unexpected errors"
    )
    return parent


def _job_parent(kind: str, cloud: bool) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    inputs = TRAIN if kind == "train" else EVAL
    if cloud:
        _add(parent, WHERE + RESOURCES + inputs)
        _tables(parent, "--tag")
    else:  # local runs: no role, bucket or spot; inputs may be local paths
        _add(
            parent,
            (
                "image",
                "job_name",
                "instance_type",
                "instance_count",  # one process (or container) per host
                *(n for n in inputs if n not in ("spot", "max_wait")),
            ),
        )
    _tables(parent, "--hp" if kind == "train" else "--eval", "--env")
    return parent


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run the flan-t5-detox train and evaluate jobs on SageMaker (training and processing "
        "jobs) or locally (Docker or plain processes). Settings: flags > environment (DETOX_<NAME>, "
        "AWS_*) > config file.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help_text, *parents):
        return sub.add_parser(name, help=help_text, description=help_text, parents=[common, *parents])

    waiting = argparse.ArgumentParser(add_help=False)
    _add(waiting, WAIT)
    _add_job_commands(command, waiting)
    _add_job_tools(command, waiting)
    _add_local_command(command, common)
    return parser


def _add_job_commands(command, waiting: argparse.ArgumentParser) -> None:
    """train, evaluate and pipeline: submit jobs to SageMaker."""
    for kind, job in (("train", "training"), ("evaluate", "processing")):
        p = command(kind, f"submit the {kind} job as a SageMaker {job} job", _job_parent(kind, True), waiting)
        _add(p, ("wait", "keep_alive") if kind == "train" else ("wait",))
    p = command(
        "pipeline",
        "train, wait, evaluate the trained model, wait, then fetch the report; or, with --native, "
        "define and start a SageMaker Pipeline doing the same, with a quality gate and the Model Registry",
        _job_parent("train", True),
        waiting,
    )
    _tables(p, "--eval")
    _add(p, ("judge_model", "keep_alive"))
    native = p.add_argument_group("native SageMaker Pipeline")
    native.add_argument(
        "--native",
        action="store_true",
        help="create or update the SageMaker Pipeline and start an execution (the laptop may sleep)",
    )
    native.add_argument(
        "--dry-run", action="store_true", help="with --native: print the pipeline definition, call no AWS"
    )
    _add(native, ("pipeline_name", "model_package_group", "max_rouge_drop"))
    p.add_argument(
        "--out", type=Path, default=Path("detox-report"), help="where the report goes (default: %(default)s)"
    )


def _add_job_tools(command, waiting: argparse.ArgumentParser) -> None:
    """wait, stop, list, fetch and upload: working with jobs and their S3 data."""
    p = command("wait", "wait for a job, showing status changes and logs; exit 0 if it completed", waiting)
    p.add_argument("name", help="training or processing job name")
    p = command("stop", "stop a running job (the train job checkpoints on SIGTERM)", waiting)
    p.add_argument("name", help="training or processing job name")
    _add(p, ("wait",))
    p = command("list", "list recent detox jobs with their status")
    p.add_argument("--kind", choices=["all", "train", "evaluate"], default="all", help="default: %(default)s")
    p.add_argument("--status", choices=["InProgress", "Completed", "Failed", "Stopping", "Stopped"])
    p.add_argument("--name-contains", default="detox", help="default: %(default)s")
    p.add_argument("--max", type=int, default=20, dest="limit", help="default: %(default)s")
    p = command("fetch", "download a job's artifacts (tarballs unpacked) or any S3 URI into a folder")
    p.add_argument("target", help="job name or s3:// URI")
    p.add_argument("--out", type=Path, help="destination folder (default: ./detox-artifacts/<target name>)")
    p = command("upload", "upload a local file or folder (checkpoint, dataset, model) to S3")
    p.add_argument("source", type=Path, help="local file or folder")
    p.add_argument("uri", help="destination s3:// URI (a folder when it ends with /)")


def _add_local_command(command, common: argparse.ArgumentParser) -> None:
    """local train|evaluate: the jobs on this machine."""
    p = command("local", "run a job on this machine: under Docker, or --no-docker as a plain process")
    local_sub = p.add_subparsers(dest="kind", required=True, metavar="JOB")
    for kind, help_text in (
        ("train", "run the train job locally"),
        ("evaluate", "run the evaluate job locally"),
    ):
        q = local_sub.add_parser(
            kind, help=help_text, description=help_text, parents=[common, _job_parent(kind, False)]
        )
        _add(q, ("docker", "work_dir", "network"))
        q.add_argument(
            "--dry-run", action="store_true", help="build the /opt/ml layout and print the command only"
        )


def _flags(args: argparse.Namespace) -> dict:
    given = vars(args)
    flags = {name: given[name] for name in FIELDS if name in given}
    for flag, (table, _, _, decode) in TABLE_FLAGS.items():
        pairs = parse_pairs(given.get(flag[2:]), flag, decode)
        if table in ("hyperparameters", "evaluate"):  # accept num-samples as well as num_samples
            pairs = {k.replace("-", "_"): v for k, v in pairs.items()}
        flags[table] = pairs
    flags["config"] = given.get("config")
    return flags


def run(args: argparse.Namespace, out=None) -> int:
    out = out or sys.stdout  # looked up now, so redirections (and pytest's capture) apply
    options = resolve(_flags(args))
    if args.command == "train":
        return commands.train(options, out)
    if args.command == "evaluate":
        return commands.evaluate(options, out)
    if args.command == "pipeline" and args.native:
        return commands.native_pipeline(options, args.dry_run, out)
    if args.command == "pipeline":
        if args.dry_run:
            raise LaunchError("--dry-run prints the native pipeline's definition: add --native")
        return commands.pipeline(options, args.out, out)
    if args.command == "wait":
        return commands.wait(options, args.name, out)
    if args.command == "stop":
        return commands.stop(options, args.name, out)
    if args.command == "list":
        return commands.list_jobs(options, args.kind, args.status, args.name_contains, args.limit, out)
    if args.command == "fetch":
        dest = args.out or Path("detox-artifacts") / args.target.rstrip("/").rsplit("/", 1)[-1]
        return commands.fetch(options, args.target, dest, out)
    if args.command == "upload":
        return commands.upload(options, args.source, args.uri, out)
    return commands.local(options, args.kind, args.dry_run, out)


def main(argv: list[str] | None = None) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from flan_t5_detox.contract.failure import JobInputError

    args = build_parser().parse_args(argv)
    # Before the SDK is imported: sagemaker.experiments calls logging.basicConfig(level=INFO),
    # which would print every botocore INFO line to the user.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except LaunchError as exc:
        message, code = str(exc), exc.code
    except JobInputError as exc:  # bad settings or S3 URIs, found by the jobs' own validation
        message, code = str(exc), EXIT_USAGE
    except (BotoCoreError, ClientError) as exc:
        message, code = explain_aws(exc), EXIT_FAILED
    except KeyboardInterrupt:
        message, code = "interrupted", EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - a bug or an SDK surprise: one line unless --debug
        if getattr(args, "debug", False):
            raise
        message, code = (
            f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for details)",
            EXIT_FAILED,
        )
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
