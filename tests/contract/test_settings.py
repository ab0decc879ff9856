import pytest

from flan_t5_detox.contract.environment import decode_hyperparameters
from flan_t5_detox.contract.failure import JobInputError
from flan_t5_detox.contract.settings import EvalConfig, TrainConfig, parse_settings


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
        ({"test_size": 1.5}, "test_size must be between 0 and 1"),
        ({"reward_input": "dialogue"}, "reward_input must be one of response, query_response"),
        ({"save_adapter_every": -1}, "save_adapter_every .* must be >= 0"),
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
