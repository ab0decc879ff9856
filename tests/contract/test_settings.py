import dataclasses

import pytest

from flan_t5_detox.contract.environment import decode_hyperparameters
from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.contract.settings import (
    CHANGEABLE_ON_RESUME,
    EvalConfig,
    JobSettings,
    TrainConfig,
    check_resume,
    did_you_mean,
    encode_hyperparameters,
    field_types,
    heldout_settings,
    parse_settings,
)


def test_defaults_are_the_notebook_values():
    c = TrainConfig()
    assert (c.learning_rate, c.ppo_epochs, c.mini_batch_size, c.batch_size, c.max_ppo_steps) == (
        1.41e-5,
        1,
        4,
        16,
        10,
    )
    assert (c.output_min_length, c.output_max_length, c.input_min_text_length, c.input_max_text_length) == (
        100,
        400,
        200,
        1000,
    )
    assert (c.top_k, c.top_p, c.min_length, c.reward_label) == (0, 1.0, 5, "nothate")


def test_raw_and_json_encoded_strings_both_parse():
    raw = {
        "learning_rate": "1e-4",
        "batch_size": '"32"',
        "adap_kl_ctrl": "false",
        "reward_label": '"nothate"',
    }
    c = parse_settings(TrainConfig, decode_hyperparameters(raw))
    assert c.learning_rate == 1e-4 and c.batch_size == 32 and c.adap_kl_ctrl is False
    assert c.reward_label == "nothate"


@pytest.mark.parametrize(
    "values, message",
    [
        ({"learnin_rate": 0.1}, "unknown hyperparameter.*did you mean 'learning_rate'"),
        ({"batch_size": "sixteen"}, "'batch_size' must be int"),
        ({"batch_size": 2.5}, "'batch_size' must be int"),
        ({"adap_kl_ctrl": "maybe"}, "'adap_kl_ctrl' must be bool"),
        ({"batch_size": 10, "mini_batch_size": 4}, "divisible by mini_batch_size"),
        ({"output_min_length": 500}, "output_min_length must not exceed"),
        ({"dtype": "float16"}, "dtype must be one of"),
        ({"learning_rate": "nan"}, "learning_rate must be finite"),
        ({"peft_checkpoint_s3_uri": "bucket/key"}, "must start with s3://"),
        ({"test_size": 1.5}, r"test_size must be in \(0, 1\), got 1.5"),
        ({"reward_input": "dialogue"}, "reward_input must be one of response, query_response"),
        ({"save_adapter_every": -1}, "save_adapter_every must be >= 0, got -1 \\(0 = never\\)"),
        ({"top_p": 0}, r"top_p must be in \(0, 1\], got 0"),
        ({"num_threads": -1}, r"num_threads must be >= 0, got -1 \(0 = one per CPU\)"),
        ({"min_length": 3, "output_min_length": 3}, "min_length must be >= 4: trl's PPO step"),
        ({"input_min_text_length": 1000}, "input_min_text_length must be smaller"),
        ({"collective_timeout": 0}, "collective_timeout must be > 0, got 0.0"),
        ({"eval_every": 4}, "eval_every=4 needs eval_samples >= 2"),
        ({"keep_best": True}, "keep_best needs eval_every > 0"),
        ({"target_kl": -0.1}, r"target_kl must be >= 0, got -0.1 \(0 = never stop early\)"),
        ({"max_rouge_drop": -0.01}, "max_rouge_drop must be >= 0"),
    ],
)
def test_bad_values_are_rejected_with_the_reason(values, message):
    with pytest.raises(JobInputError, match=message):
        parse_settings(TrainConfig, values)


def test_eval_settings_validate_too():
    with pytest.raises(JobInputError, match="different classes"):
        parse_settings(EvalConfig, {"reward_label": "hate"})
    assert parse_settings(EvalConfig, {"num_samples": "0"}).num_samples == 0
    with pytest.raises(JobInputError, match="reward_input must be one of"):
        parse_settings(EvalConfig, {"reward_input": "both"})
    assert TrainConfig().reward_input == EvalConfig().reward_input == "response"
    assert parse_settings(TrainConfig, {"reward_input": "query_response"}).reward_input == "query_response"


def test_the_shared_part_is_one_set_of_fields_in_both_jobs():
    shared = field_types(JobSettings)
    assert len(shared) == 16
    for cls in (TrainConfig, EvalConfig):
        assert {name: field_types(cls)[name] for name in shared} == shared
        assert all(getattr(cls(), name) == getattr(JobSettings(), name) for name in shared)
    # Each job has its own generation batch: rollouts take the whole PPO batch by default.
    assert (TrainConfig().generation_batch_size, EvalConfig().generation_batch_size) == (0, 16)
    assert len(field_types(TrainConfig)) == 45 and len(field_types(EvalConfig)) == 26


def test_the_machine_checks_refuse_or_warn_and_nothing_else():
    assert TrainConfig().preflight == EvalConfig().preflight == "refuse"
    assert parse_settings(EvalConfig, {"preflight": "warn"}).preflight == "warn"
    with pytest.raises(JobInputError, match="preflight must be one of refuse, warn, got 'off'"):
        parse_settings(TrainConfig, {"preflight": "off"})


def test_every_problem_is_reported_at_once():
    with pytest.raises(JobInputError) as caught:
        parse_settings(
            EvalConfig, {"num_samples": -1, "top_k": -1, "confidence": 1.0, "toxic_label": "nothate"}
        )
    message = str(caught.value)
    assert message.startswith("invalid settings: ")
    for part in (
        "num_samples must be >= 0, got -1 (0 = the whole test split)",
        "top_k must be >= 0, got -1 (0 = no top-k filtering)",
        "confidence must be in (0, 1), got 1.0",
        "reward_label and toxic_label must name different classes",
    ):
        assert part in message
    with pytest.raises(JobInputError, match="generation_batch_size must be >= 1, got 0"):
        parse_settings(EvalConfig, {"generation_batch_size": 0})
    assert parse_settings(TrainConfig, {"generation_batch_size": 0}).generation_batch_size == 0


def test_the_hint_suggests_a_close_name_only():
    assert did_you_mean("batch_sise", ["batch_size", "seed"]) == "'batch_sise' (did you mean 'batch_size'?)"
    assert did_you_mean("zzz", ["batch_size", "seed"]) == "'zzz'"
    with pytest.raises(JobInputError, match=r"'num_sample' \(did you mean 'num_samples'\?\)\. Known: "):
        parse_settings(EvalConfig, {"num_sample": 3})


def test_settings_are_given_by_name():
    with pytest.raises(TypeError):
        TrainConfig("google/flan-t5-small")  # type: ignore[misc]
    assert dataclasses.replace(TrainConfig(), batch_size=8).batch_size == 8


def test_hyperparameters_are_encoded_as_the_sdk_sends_them():
    assert encode_hyperparameters({"a": 1, "b": "x", "c": True}, check=False) == {
        "a": "1",
        "b": '"x"',
        "c": "true",
    }


def test_checked_hyperparameters_are_sent_as_parsed_or_refused():
    sent = encode_hyperparameters({"batch_size": "32", "adap_kl_ctrl": "false", "reward_label": "nothate"})
    assert sent == {"batch_size": "32", "adap_kl_ctrl": "false", "reward_label": '"nothate"'}
    assert parse_settings(TrainConfig, decode_hyperparameters(sent)).batch_size == 32
    with pytest.raises(JobInputError, match="did you mean 'max_ppo_steps'"):
        encode_hyperparameters({"max_ppo_step": 2})
    with pytest.raises(JobInputError, match="divisible by mini_batch_size"):
        encode_hyperparameters({"batch_size": 10})


def test_samples_per_prompt_is_bounded_and_a_judge_needs_its_label():
    assert EvalConfig().samples_per_prompt >= 1 and EvalConfig().judge_model_name == ""
    assert parse_settings(EvalConfig, {"samples_per_prompt": "25"}).samples_per_prompt == 25
    for bad in (0, 101):
        with pytest.raises(JobInputError, match=r"samples_per_prompt must be in \[1, 100\]"):
            parse_settings(EvalConfig, {"samples_per_prompt": bad})
    with pytest.raises(JobInputError, match="judge_label must name"):
        parse_settings(EvalConfig, {"judge_label": ""})


def test_the_held_out_evaluation_runs_under_the_evaluate_jobs_settings_made_from_the_train_jobs():
    config = parse_settings(
        TrainConfig,
        {
            "eval_every": 2,
            "eval_samples": 8,
            "seed": 7,
            "top_p": 0.9,
            "output_min_length": 40,
            "output_max_length": 60,
            "batch_size": 8,
        },
    )
    settings = heldout_settings(config)
    assert isinstance(settings, EvalConfig)
    assert all(getattr(settings, f.name) == getattr(config, f.name) for f in dataclasses.fields(JobSettings))
    assert (settings.num_samples, settings.max_new_tokens, settings.generation_batch_size) == (8, 60, 8)
    assert settings.samples_per_prompt == 1
    with pytest.raises(JobInputError, match="reward_label and toxic_label must name different classes"):
        heldout_settings(dataclasses.replace(config, toxic_label="nothate"))


def test_a_resume_refuses_settings_that_define_another_run_and_names_each_with_the_fix():
    recorded = dataclasses.asdict(TrainConfig(batch_size=16, seed=42))
    with pytest.raises(JobInputError) as caught:
        check_resume(recorded, TrainConfig(batch_size=32, seed=1, max_ppo_steps=20), "/opt/ml/checkpoints")
    message = str(caught.value)
    assert "batch_size was 16, now 32" in message and "seed was 42, now 1" in message
    assert "max_ppo_steps" not in message.split("A resume may change only")[0]  # allowed: not a problem
    assert "Set them back to continue that run, or give this run an empty checkpoint folder" in message
    assert message.endswith(", ".join(CHANGEABLE_ON_RESUME))


def test_a_resume_may_change_the_listed_settings_and_says_which_changed():
    recorded = dataclasses.asdict(TrainConfig())
    changes = check_resume(recorded, TrainConfig(max_ppo_steps=20, num_threads=2), "ckpt")
    assert [str(c) for c in changes] == ["num_threads 0 -> 2", "max_ppo_steps 10 -> 20"]
    assert check_resume(recorded, TrainConfig(), "ckpt") == []
    # A setting added since the checkpoint was written counts as recorded at its default.
    del recorded["target_kl"]
    assert check_resume(recorded, TrainConfig(), "ckpt") == []
    with pytest.raises(JobInputError, match="target_kl was 0.0, now 0.5"):
        check_resume(recorded, TrainConfig(target_kl=0.5), "ckpt")
