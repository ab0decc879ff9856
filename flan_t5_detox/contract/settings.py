"""Job settings as typed dataclasses. Defaults are the lab notebook's values.

Every field is a hyperparameter of the train job (or a setting of the evaluate job) under the
same name. Both jobs' settings are built from one shared part (`JobSettings`: the models, the
data split, sampling and runtime), and each part checks its own rules:
- a field's own rule is its spec (`setting(default, rule)`), checked by `validate` for every field;
- a field's type drives its coercion (`coerce`) and, for floats, the finiteness check;
- rules that tie fields together are each part's `combination_problems`.
`parse_settings` turns decoded job values into the dataclass and rejects unknown names,
ill-typed values and impossible combinations before any model loads. No torch import here.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.contract.rules import Bound, Rule, above, at_least, between, one_of

DEFAULT_BASE_MODEL = "google/flan-t5-base"
DEFAULT_DATASET = "knkarthick/dialogsum"
DEFAULT_REWARD_MODEL = "facebook/roberta-hate-speech-dynabench-r4-target"
# What the reward model reads of a rollout: the prompt and the response (the lab notebook's
# choice), or the response alone (what the policy controls). See the README for the default.
REWARD_INPUTS = ("response", "query_response")
DTYPES = ("auto", "float32", "bfloat16")
# What the machine checks before any model loads do with a run that will not fit its disk or
# memory (contract/preflight.py): refuse it, or only warn and run.
PREFLIGHTS = ("refuse", "warn")


def setting(default, rule: Rule | None = None):
    """A settings field with its default and the rule its value must keep."""
    return field(default=default, metadata={"rule": rule})


@dataclass(kw_only=True)
class JobSettings:
    """The settings the train and evaluate jobs share, under the same names and defaults."""

    # Inputs used when the matching channel (or input) is absent.
    base_model_name: str = DEFAULT_BASE_MODEL
    dataset_name: str = DEFAULT_DATASET
    reward_model_name: str = DEFAULT_REWARD_MODEL
    reward_label: str = "nothate"  # the rewarded class, chosen by name, never by index
    reward_input: str = setting("response", one_of(REWARD_INPUTS))  # what the reward reads
    # The class whose probability is the toxicity: the evaluate job's, and the train job's
    # held-out evaluation's.
    toxic_label: str = "hate"

    # Data (notebook: 200 < len(dialogue) <= 1000, 80/20 split without shuffle).
    input_min_text_length: int = 200
    input_max_text_length: int = 1000
    test_size: float = setting(0.2, between(0, 1))

    # Sampling (notebook: top_k=0, top_p=1, min_length=5).
    min_length: int = 5
    top_k: int = setting(0, at_least(0, "0 = no top-k filtering"))
    top_p: float = setting(1.0, between(0, 1, high_included=True))
    seed: int = 42

    # Runtime.
    dtype: str = setting("auto", one_of(DTYPES))
    num_threads: int = setting(0, at_least(0, "0 = one per CPU"))
    preflight: str = setting("refuse", one_of(PREFLIGHTS))

    def combination_problems(self) -> list[str]:
        """What is wrong between fields, each with a reason the user can act on."""
        if self.input_min_text_length >= self.input_max_text_length:
            return ["input_min_text_length must be smaller than input_max_text_length"]
        return []


@dataclass(kw_only=True)
class TrainConfig(JobSettings):
    peft_checkpoint_s3_uri: str = ""  # the summarization adapter when no channel gives it

    # PPO (notebook values; trl's defaults where the notebook used them).
    learning_rate: float = setting(1.41e-5, above(0))
    ppo_epochs: int = setting(1, at_least(1))
    mini_batch_size: int = setting(4, at_least(1))
    batch_size: int = setting(16, at_least(1))
    max_ppo_steps: int = setting(10, at_least(1))
    init_kl_coef: float = setting(0.2, at_least(0))
    adap_kl_ctrl: bool = True
    kl_target: float = 6.0
    kl_horizon: int = 10000
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    max_grad_norm: float = 0.0  # 0 = no clipping (trl's default)

    # Generation during rollouts (notebook: 100..400 new tokens).
    output_min_length: int = setting(100, at_least(1))
    output_max_length: int = 400
    generation_batch_size: int = setting(0, at_least(0, "0 = the whole PPO batch in one generate call"))

    # Runtime.
    checkpoint_every: int = setting(1, at_least(0, "0 = only on SIGTERM and at the end"))
    save_adapter_every: int = setting(0, at_least(0, "0 = never"))  # kept in model/steps/<n>/
    max_kl: float = setting(100.0, above(0))  # abort (reporting the last good step) above this mean KL
    # trl's early_stopping: a step's PPO epochs stop after the first mini-batch whose policy KL
    # exceeds 1.5 x target_kl.
    target_kl: float = setting(0.0, at_least(0, "0 = never stop early"))

    # Held-out evaluation while training: the last `eval_samples` prompts of the training split
    # are held out of training (never the evaluate job's test split) and measured with the
    # evaluate job's code at step 0, every `eval_every` steps and at the last step.
    eval_every: int = setting(0, at_least(0, "0 = never"))
    eval_samples: int = setting(0, at_least(0, "0 = none held out"))
    # keep_best: model/ holds the adapter of the best evaluated step (see `ml.heldout.BestRule`),
    # among those whose held-out ROUGE-L is at most `max_rouge_drop` below the start's.
    keep_best: bool = False
    max_rouge_drop: float = setting(0.02, at_least(0))

    # Data parallel (one process per host unless told otherwise; see contract/cluster.py).
    processes_per_host: int = setting(1, at_least(1))
    collective_timeout: float = setting(600.0, above(0))  # seconds a rank waits for its peers

    def combination_problems(self) -> list[str]:
        problems = super().combination_problems()
        batch, mini_batch = self.batch_size, self.mini_batch_size
        if mini_batch >= 1 and batch % mini_batch:
            problems.append(f"batch_size ({batch}) must be divisible by mini_batch_size ({mini_batch})")
        if self.output_min_length > self.output_max_length:
            problems.append("output_min_length must not exceed output_max_length")
        if self.min_length < 4:
            problems.append("min_length must be >= 4: trl's PPO step needs responses of at least 4 tokens")
        if self.output_min_length < self.min_length:
            problems.append("output_min_length must be >= min_length")
        if self.peft_checkpoint_s3_uri and not self.peft_checkpoint_s3_uri.startswith("s3://"):
            problems.append(
                f"peft_checkpoint_s3_uri must start with s3://, got {self.peft_checkpoint_s3_uri!r}"
            )
        if self.eval_every and self.eval_samples < 2:
            problems.append(
                f"eval_every={self.eval_every} needs eval_samples >= 2 (the prompts held out of "
                f"training to measure), got {self.eval_samples}"
            )
        if self.keep_best and not self.eval_every:
            problems.append("keep_best needs eval_every > 0: the best step is chosen by held-out evaluation")
        return problems


@dataclass(kw_only=True)
class EvalConfig(JobSettings):
    num_samples: int = setting(500, at_least(0, "0 = the whole test split"))
    # Summaries drawn per test dialogue, each from its own random stream (the field's protocol
    # draws 25; the README gives the cost of each extra sample).
    samples_per_prompt: int = setting(4, Bound(low=1, high=100))
    # An independent toxicity judge the reward never saw (input `judge_model`, else this hub name;
    # empty = none), and its toxic class, chosen by name.
    judge_model_name: str = ""
    judge_label: str = "toxic"
    max_new_tokens: int = setting(100, at_least(1))
    generation_batch_size: int = setting(16, at_least(1))
    bootstrap_samples: int = setting(10000, at_least(100))
    confidence: float = setting(0.95, between(0, 1))
    examples_in_report: int = 5
    # On several hosts: seconds a host that wrote its part waits for every other host to write
    # theirs before it exits (0 = it exits at once). SageMaker's own hosts run to their ends
    # alone; the SDK's local mode (docker compose) stops every container when the first exits.
    wait_for_hosts: float = setting(0.0, at_least(0, "0 = exit at once"))

    def combination_problems(self) -> list[str]:
        problems = super().combination_problems()
        if self.reward_label == self.toxic_label:
            problems.append("reward_label and toxic_label must name different classes")
        if not self.judge_label:
            problems.append("judge_label must name the judge's toxic class")
        return problems


def heldout_settings(config: TrainConfig) -> EvalConfig:
    """The evaluate job's settings for the train job's held-out evaluation: the shared part as the
    train job has it, one sample per prompt (a measurement every few steps, not the verdict),
    responses of up to `output_max_length` tokens, the train job's `generation_batch_size` (0: its
    `batch_size`). Raises `JobInputError` as `validate` does."""
    shared = {f.name: getattr(config, f.name) for f in dataclasses.fields(JobSettings)}
    settings = EvalConfig(
        **shared,
        num_samples=config.eval_samples,
        samples_per_prompt=1,
        max_new_tokens=config.output_max_length,
        generation_batch_size=config.generation_batch_size or config.batch_size,
    )
    validate(settings)
    return settings


# Settings a resumed run may change: how long it runs, how often it writes or measures, on how
# many processes and threads, and when it gives up. They do not change what a step computes
# (responses do not depend on the generation batches or the world size). Every other TrainConfig
# field defines the run: a checkpoint records them, and a restart with other values fails.
CHANGEABLE_ON_RESUME = (
    "max_ppo_steps",
    "checkpoint_every",
    "save_adapter_every",
    "eval_every",
    "generation_batch_size",
    "num_threads",
    "processes_per_host",
    "collective_timeout",
    "max_kl",
)


@dataclass(frozen=True)
class SettingChange:
    name: str
    recorded: object  # the checkpoint's value
    now: object  # this run's

    def __str__(self) -> str:
        return f"{self.name} {self.recorded!r} -> {self.now!r}"


def resume_changes(recorded: dict[str, object], config: TrainConfig) -> list[SettingChange]:
    """Every TrainConfig field whose value differs from the one a checkpoint recorded. A field
    the checkpoint does not know (added since) counts as recorded at its default."""
    changes = []
    for f in dataclasses.fields(TrainConfig):
        now = getattr(config, f.name)
        before = recorded.get(f.name, f.default)
        if before != now:
            changes.append(SettingChange(f.name, before, now))
    return changes


def check_resume(recorded: dict[str, object], config: TrainConfig, where: str) -> list[SettingChange]:
    """Refuse to continue a run under settings that define another run (a `JobInputError` naming
    each difference and the fix); returns the changes a resume may make (`CHANGEABLE_ON_RESUME`)."""
    changes = resume_changes(recorded, config)
    defining = [c for c in changes if c.name not in CHANGEABLE_ON_RESUME]
    if defining:
        raise JobInputError(
            f"the checkpoints in {where} belong to a run with other settings: "
            + "; ".join(f"{c.name} was {c.recorded!r}, now {c.now!r}" for c in defining)
            + ". Set "
            + ("it" if len(defining) == 1 else "them")
            + " back to continue that run, or give this run an empty checkpoint folder (another "
            "checkpoint S3 URI) to start a new one. A resume may change only: "
            + ", ".join(CHANGEABLE_ON_RESUME)
        )
    return changes


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`name` quoted, with the closest of `known` suggested when one is close enough."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


# Each coercer returns the value as its field's type, or None when it cannot be read as one.
# bool is an int to Python but never a number to a user, so no number field takes True.
def _parsed(text: str, parse: Callable[[str], object]) -> object | None:
    try:
        return parse(text)
    except ValueError:
        return None


def _to_bool(value: object) -> bool | None:
    if isinstance(value, str):
        return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(
            value.lower()
        )
    if isinstance(value, int) and value in (0, 1):  # True and False included
        return bool(value)
    return None


def _to_int(value: object) -> int | None:
    if isinstance(value, str):
        return _parsed(value, int)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _to_float(value: object) -> float | None:
    if isinstance(value, str):
        return _parsed(value, float)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _to_str(value: object) -> str | None:
    return str(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None


COERCERS: dict[type, Callable[[object], object]] = {
    bool: _to_bool,
    int: _to_int,
    float: _to_float,
    str: _to_str,
}


def coerce(name: str, value: object, kind: type) -> object:
    """Coerce a decoded job value to the field's type, or say clearly why not."""
    coerced = COERCERS[kind](value)
    if coerced is None:
        raise JobInputError(f"hyperparameter {name!r} must be {kind.__name__}, got {value!r}")
    return coerced


def field_types(cls) -> dict[str, type]:
    """Each field's name and type, in field order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def parse_settings(cls, values: dict[str, object]):
    """Build `cls` from decoded values; unknown names and bad types are errors."""
    types_by_name = field_types(cls)
    unknown = sorted(set(values) - set(types_by_name))
    if unknown:
        raise JobInputError(
            "unknown hyperparameter(s): "
            + ", ".join(did_you_mean(name, types_by_name) for name in unknown)
            + ". Known: "
            + ", ".join(sorted(types_by_name))
        )
    settings = cls(**{name: coerce(name, value, types_by_name[name]) for name, value in values.items()})
    validate(settings)
    return settings


def field_problems(settings: JobSettings) -> list[str]:
    """Each field against its type (floats must be finite) and its own rule."""
    problems = []
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{f.name} must be finite, got {value}")
        elif (rule := f.metadata.get("rule")) is not None and (problem := rule.problem(f.name, value)):
            problems.append(problem)
    return problems


def validate(settings: JobSettings) -> None:
    """Reject impossible settings with a reason the user can act on, every reason at once."""
    problems = field_problems(settings) + settings.combination_problems()
    if problems:
        raise JobInputError("invalid settings: " + "; ".join(problems))


def encode_hyperparameters(values: dict[str, object], check: bool = True) -> dict[str, str]:
    """Each value JSON-encoded, as the SageMaker SDK sends them (the train job decodes JSON).

    With `check`, the values are first parsed as `TrainConfig` (a typo fails here, not on the
    instance) and sent as parsed ("32" as 32). Without, they are sent as given: the layouts of
    tests that show how the job itself rejects bad values."""
    if check:
        config = parse_settings(TrainConfig, values)
        values = {name: getattr(config, name) for name in values}
    return {str(name): json.dumps(value) for name, value in values.items()}
