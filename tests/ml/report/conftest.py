"""The report of the synthetic evaluation, written once for the tests that only read it."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from flan_t5_detox.ml.evaluation import Evaluation
from flan_t5_detox.ml.report import write_report
from tests.ml.report.synthetic import context, synthetic_evaluation


@dataclass
class Written:
    evaluation: Evaluation
    folder: Path  # the report folder
    paths: list[Path]  # what `write_report` returned


@pytest.fixture(scope="package")
def written(tmp_path_factory) -> Written:
    """`synthetic_evaluation()` with training curves, no trade-off curve; do not modify."""
    result = synthetic_evaluation()
    folder = tmp_path_factory.mktemp("written") / "report"
    return Written(result, folder, write_report(folder, result, context()))
