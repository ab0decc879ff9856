import pytest

from flan_t5_detox.contract.rules import above, at_least, between, one_of


@pytest.mark.parametrize(
    ("rule", "allowed", "refused"),
    [
        (at_least(1), [1, 2, 10**6], [0, -1]),
        (above(0), [1e-9, 3.0], [0, 0.0, -1]),
        (between(0, 1), [0.5, 1e-9], [0, 1, 1.5]),
        (between(0, 1, high_included=True), [1, 1.0, 0.5], [0, 1.0001]),
        (one_of(("a", "b")), ["a", "b"], ["c", "A", ""]),
    ],
)
def test_each_rule_allows_what_it_says_and_nothing_else(rule, allowed, refused):
    assert all(rule.problem("x", value) is None for value in allowed)
    assert all(rule.problem("x", value) for value in refused)


def test_a_problem_names_the_setting_what_it_allows_the_value_and_the_note():
    assert at_least(0, "0 = never").problem("every", -2) == "every must be >= 0, got -2 (0 = never)"
    assert above(0).problem("rate", 0.0) == "rate must be > 0, got 0.0"
    assert between(0, 1).problem("size", 1.5) == "size must be in (0, 1), got 1.5"
    assert between(0, 1, high_included=True).problem("p", 2) == "p must be in (0, 1], got 2"
    assert one_of(("auto", "float32")).problem("dtype", "float16") == (
        "dtype must be one of auto, float32, got 'float16'"
    )
