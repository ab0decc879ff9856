"""The report context and its JSON round trip (a sharded evaluation's parts carry it)."""

import dataclasses
import json
import math

import numpy as np

from flan_t5_detox.ml.report import context_from_json, context_json
from flan_t5_detox.ml.report.context import json_safe
from tests.ml.report.synthetic import context


def test_the_context_comes_back_from_json_as_it_was():
    for original in (context(), context(training=False)):
        original = dataclasses.replace(original, created="2000-01-01T00:00:00Z")  # not the default: now
        encoded = context_json(original)
        text = json.dumps(encoded, allow_nan=False)  # strict JSON, as a part is written
        assert context_from_json(json.loads(text)) == original


def test_json_safe_turns_numpy_scalars_to_python_and_non_finite_floats_to_none():
    value = {1: (np.float32(0.5), np.int64(3)), "x": [math.nan, -math.inf, 2.0, "a", None]}
    safe = json_safe(value)
    assert safe == {"1": [0.5, 3], "x": [None, None, 2.0, "a", None]}
    assert type(safe["1"][0]) is float and type(safe["1"][1]) is int
    json.dumps(safe, allow_nan=False)
