"""Resolving job inputs: a channel folder when given, else a hub name or an S3 URI; SageMaker's
tarballs unpacked."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flan_t5_detox.contract.archives import resolve_folder
from flan_t5_detox.contract.environment import ProcessingJobEnvironment, TrainingJobEnvironment
from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.contract.paths import ADAPTER_CONFIG, METRICS_FILE, MlPaths
from flan_t5_detox.contract.settings import EvalConfig, TrainConfig


def model_source(channel: Path | None, hub_name: str, what: str) -> str:
    """A channel folder wins; otherwise the hub name (downloaded by from_pretrained)."""
    if channel is not None:
        return str(channel)
    if not hub_name:
        raise JobInputError(f"no {what}: provide the channel or its hub name")
    return hub_name


def peft_checkpoint_dir(channel: Path | None, s3_uri: str, scratch: Path | None = None) -> Path:
    """The summarization adapter folder: the channel, or downloaded from `s3_uri`."""
    if channel is not None:
        return channel
    if not s3_uri:
        raise JobInputError(
            "no PEFT summarization checkpoint: give a 'peft_checkpoint' channel or the "
            "'peft_checkpoint_s3_uri' hyperparameter"
        )
    from flan_t5_detox.contract.s3 import download  # boto3 only when needed

    dest = Path(tempfile.mkdtemp(prefix="peft-checkpoint-", dir=scratch))
    download(s3_uri, dest)
    return dest


@dataclass
class TrainingInputs:
    """Where a training run's models come from: each a folder (a channel) or a hub name, and
    the summarization adapter's folder. `provenance` records which, for the adapter's record:
    "channel:<name>" or the hub name (or S3 URI) the settings gave."""

    base_model: str
    reward_model: str
    peft_checkpoint: Path
    dataset: Path | None  # None: the hub dataset `dataset_name`
    provenance: dict[str, str]  # base_model, summarization_adapter, reward_model -> where from


def training_inputs(
    env: TrainingJobEnvironment, config: TrainConfig, scratch: Path | None = None
) -> TrainingInputs:
    def origin(channel: str, hub_name: str) -> str:
        return f"channel:{channel}" if env.channel(channel) is not None else hub_name

    return TrainingInputs(
        base_model=model_source(env.channel("base_model"), config.base_model_name, "base model"),
        reward_model=model_source(env.channel("reward_model"), config.reward_model_name, "reward model"),
        peft_checkpoint=peft_checkpoint_dir(
            env.channel("peft_checkpoint"), config.peft_checkpoint_s3_uri, scratch
        ),
        dataset=env.channel("dataset"),
        provenance={
            "base_model": origin("base_model", config.base_model_name),
            "summarization_adapter": origin("peft_checkpoint", config.peft_checkpoint_s3_uri),
            "reward_model": origin("reward_model", config.reward_model_name),
        },
    )


@dataclass
class EvaluationInputs:
    """The evaluate job's inputs, each resolved to a folder (a SageMaker tarball is unpacked)
    or a hub name; `as_given` keeps the path the user gave of each adapter, which differs from
    the folder used when a tarball was unpacked."""

    base_model: str
    reward_model: str
    judge_model: str | None  # the independent toxicity judge, if any
    before_adapter: Path  # the summarization adapter
    after_adapter: Path  # the train job's model/
    training_output: Path | None  # the train job's output/data/, for the PPO curves
    dataset: Path | None
    as_given: dict[str, Path]  # before_adapter, after_adapter -> the input's path as given


def evaluation_inputs(env: ProcessingJobEnvironment, config: EvalConfig, scratch: Path) -> EvaluationInputs:
    def required(name: str, what: str) -> Path:
        path = env.input(name)
        if path is None:
            expected = MlPaths(env.root).processing_input(name)
            raise JobInputError(f"missing input {name!r} ({what}): expected it under {expected}")
        return path

    before = required("peft_checkpoint", "the summarization adapter, the 'before' model")
    after = required("detoxified", "the train job's model/ folder or model.tar.gz, the 'after' model")
    training_output = env.input("training_output")
    return EvaluationInputs(
        base_model=model_source(env.input("base_model"), config.base_model_name, "base model"),
        reward_model=model_source(env.input("reward_model"), config.reward_model_name, "reward model"),
        judge_model=str(judge) if (judge := env.input("judge_model")) else config.judge_model_name or None,
        before_adapter=resolve_folder(before, ADAPTER_CONFIG, "input 'peft_checkpoint'", scratch),
        after_adapter=resolve_folder(after, ADAPTER_CONFIG, "input 'detoxified'", scratch),
        training_output=None
        if training_output is None
        else resolve_folder(training_output, METRICS_FILE, "input 'training_output'", scratch),
        dataset=env.input("dataset"),
        as_given={"before_adapter": before, "after_adapter": after},
    )


@contextmanager
def named_as_given(inputs: EvaluationInputs) -> Iterator[None]:
    """Bad-input errors about an unpacked tarball name the input the user gave, never the
    scratch folder it was unpacked into."""
    try:
        yield
    except JobInputError as exc:
        message = str(exc)
        for name, given in inputs.as_given.items():
            unpacked = str(getattr(inputs, name))
            if unpacked != str(given):
                message = message.replace(unpacked, f"{given} (unpacked)")
        if message == str(exc):
            raise
        raise JobInputError(message) from exc
