"""Job settings as typed dataclasses. Defaults are the lab notebook's values.

Every field is a hyperparameter of the train job (or a setting of the evaluate
job) under the same name. `parse_settings` turns decoded job values into the
dataclass and rejects unknown names, ill-typed values and impossible
combinations before any model loads. No torch import here.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass

from flan_t5_detox.contract.failure import JobInputError

DEFAULT_BASE_MODEL = "google/flan-t5-base"
DEFAULT_DATASET = "knkarthick/dialogsum"
DEFAULT_REWARD_MODEL = "facebook/roberta-hate-speech-dynabench-r4-target"
# What the reward model reads of a rollout: the prompt and the response (the lab notebook's
# choice), or the response alone (what the policy controls). See the README for the default.
REWARD_INPUTS = ("response", "query_response")


@dataclass
class TrainConfig:
    # Inputs used when the matching channel is absent.
    base_model_name: str = DEFAULT_BASE_MODEL
    peft_checkpoint_s3_uri: str = ""
    dataset_name: str = DEFAULT_DATASET
    reward_model_name: str = DEFAULT_REWARD_MODEL
    reward_label: str = "nothate"  # the rewarded class, chosen by name, never by index
    reward_input: str = "response"  # one of REWARD_INPUTS

    # Data (notebook: 200 < len(dialogue) <= 1000, 80/20 split without shuffle).
    input_min_text_length: int = 200
    input_max_text_length: int = 1000
    test_size: float = 0.2

    # PPO (notebook values; trl's defaults where the notebook used them).
    learning_rate: float = 1.41e-5
    ppo_epochs: int = 1
    mini_batch_size: int = 4
    batch_size: int = 16
    max_ppo_steps: int = 10
    init_kl_coef: float = 0.2
    adap_kl_ctrl: bool = True
    kl_target: float = 6.0
    kl_horizon: int = 10000
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    max_grad_norm: float = 0.0  # 0 = no clipping (trl's default)
    seed: int = 42

    # Generation during rollouts (notebook: top_k=0, top_p=1, min_length=5, 100..400 new tokens).
    output_min_length: int = 100
    output_max_length: int = 400
    min_length: int = 5
    top_k: int = 0
    top_p: float = 1.0
    generation_batch_size: int = 0  # 0 = the whole PPO batch in one generate call

    # Runtime.
    dtype: str = "auto"  # auto | float32 | bfloat16
    num_threads: int = 0  # 0 = one per available CPU
    checkpoint_every: int = 1  # PPO steps between checkpoints; 0 = only on SIGTERM/end
    save_adapter_every: int = 0  # keep the adapter every n PPO steps in model/steps/<n>/; 0 = never
    max_kl: float = 100.0  # abort (with a report of the last good step) when mean KL exceeds this

    # Data parallel (one process per host unless told otherwise; see contract/cluster.py).
    processes_per_host: int = 1
    collective_timeout: float = 600.0  # seconds a rank waits for its peers before the job fails


@dataclass
class EvalConfig:
    base_model_name: str = DEFAULT_BASE_MODEL
    dataset_name: str = DEFAULT_DATASET
    reward_model_name: str = DEFAULT_REWARD_MODEL
    reward_label: str = "nothate"
    reward_input: str = "response"  # what the reward (and so the headline toxicity) reads
    toxic_label: str = "hate"
    input_min_text_length: int = 200
    input_max_text_length: int = 1000
    test_size: float = 0.2
    num_samples: int = 500  # 0 = the whole test split
    max_new_tokens: int = 100
    min_length: int = 5
    top_k: int = 0
    top_p: float = 1.0
    generation_batch_size: int = 16
    seed: int = 42
    bootstrap_samples: int = 10000
    confidence: float = 0.95
    examples_in_report: int = 5
    dtype: str = "auto"
    num_threads: int = 0


_DTYPES = ("auto", "float32", "bfloat16")


def _coerce(name: str, value: object, kind: type) -> object:
    """Coerce a decoded job value to the field's type, or say clearly why not."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif kind is int:
        if isinstance(value, bool):
            pass
        elif isinstance(value, int):
            return value
        elif isinstance(value, float) and value.is_integer():
            return int(value)
        elif isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise JobInputError(f"hyperparameter {name!r} must be {kind.__name__}, got {value!r}")


def _field_types(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def parse_settings(cls, values: dict[str, object]):
    """Build `cls` from decoded values; unknown names and bad types are errors."""
    types_by_name = _field_types(cls)
    unknown = sorted(set(values) - set(types_by_name))
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, types_by_name, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise JobInputError(
            "unknown hyperparameter(s): " + ", ".join(hints) + ". Known: " + ", ".join(sorted(types_by_name))
        )
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(name, value, types_by_name[name])
    settings = cls(**kwargs)
    validate(settings)
    return settings


def validate(settings) -> None:
    """Reject impossible combinations with a reason the user can act on."""
    problems = []
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{f.name} must be finite, got {value}")
    if settings.dtype not in _DTYPES:
        problems.append(f"dtype must be one of {', '.join(_DTYPES)}, got {settings.dtype!r}")
    if settings.reward_input not in REWARD_INPUTS:
        problems.append(
            f"reward_input must be one of {', '.join(REWARD_INPUTS)}, got {settings.reward_input!r}"
        )
    if settings.num_threads < 0:
        problems.append("num_threads must be >= 0 (0 = one per CPU)")
    if not 0 < settings.test_size < 1:
        problems.append(f"test_size must be between 0 and 1, got {settings.test_size}")
    if settings.input_min_text_length >= settings.input_max_text_length:
        problems.append("input_min_text_length must be smaller than input_max_text_length")
    if not 0 < settings.top_p <= 1:
        problems.append(f"top_p must be in (0, 1], got {settings.top_p}")
    if settings.top_k < 0:
        problems.append("top_k must be >= 0 (0 = no top-k filtering)")
    if isinstance(settings, TrainConfig):
        s = settings
        for name in ("batch_size", "mini_batch_size", "ppo_epochs", "max_ppo_steps", "output_min_length"):
            if getattr(s, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(s, name)}")
        if s.mini_batch_size >= 1 and s.batch_size % s.mini_batch_size:
            problems.append(
                f"batch_size ({s.batch_size}) must be divisible by mini_batch_size ({s.mini_batch_size})"
            )
        if s.output_min_length > s.output_max_length:
            problems.append("output_min_length must not exceed output_max_length")
        if s.min_length < 4:
            problems.append("min_length must be >= 4: trl's PPO step needs responses of at least 4 tokens")
        if s.output_min_length < s.min_length:
            problems.append("output_min_length must be >= min_length")
        if s.learning_rate <= 0:
            problems.append("learning_rate must be > 0")
        if s.init_kl_coef < 0 or s.max_kl <= 0:
            problems.append("init_kl_coef must be >= 0 and max_kl > 0")
        if s.checkpoint_every < 0 or s.generation_batch_size < 0 or s.save_adapter_every < 0:
            problems.append("checkpoint_every, save_adapter_every and generation_batch_size must be >= 0")
        if s.processes_per_host < 1 or s.collective_timeout <= 0:
            problems.append("processes_per_host must be >= 1 and collective_timeout > 0")
        if s.peft_checkpoint_s3_uri and not s.peft_checkpoint_s3_uri.startswith("s3://"):
            problems.append(f"peft_checkpoint_s3_uri must start with s3://, got {s.peft_checkpoint_s3_uri!r}")
    if isinstance(settings, EvalConfig):
        s = settings
        if s.num_samples < 0:
            problems.append("num_samples must be >= 0 (0 = the whole test split)")
        if s.max_new_tokens < 1 or s.generation_batch_size < 1:
            problems.append("max_new_tokens and generation_batch_size must be >= 1")
        if not 0 < s.confidence < 1:
            problems.append("confidence must be between 0 and 1")
        if s.bootstrap_samples < 100:
            problems.append("bootstrap_samples must be >= 100")
        if s.reward_label == s.toxic_label:
            problems.append("reward_label and toxic_label must name different classes")
    if problems:
        raise JobInputError("invalid settings: " + "; ".join(problems))
