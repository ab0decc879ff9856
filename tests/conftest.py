"""Shared fixtures: the embedded default's tiny models (no hub), the shipped sample dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Real local servers (S3, SageMaker API) as fixtures: s3_server, moto_server, sagemaker_proxy, aws.
pytest_plugins = ["tests.servers"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _reset_job_logging():
    """Jobs run in-process (demo, evaluate tests, also from module fixtures) install the job's
    stdout log handler on the root logger; remove it before each test so later tests (e.g. the
    launcher's stdout) see a clean slate."""
    import logging

    from flan_t5_detox.contract.failure import JOB_HANDLER_NAME

    for handler in list(logging.root.handlers):
        if handler.get_name() == JOB_HANDLER_NAME:
            logging.root.removeHandler(handler)
            logging.root.setLevel(logging.WARNING)
    yield


@pytest.fixture(scope="session")
def tiny_models():
    """The embedded default (the demo's models), as shipped, checked against its manifest."""
    from flan_t5_detox.fixtures.embedded import embedded_default

    return embedded_default()


@pytest.fixture(scope="session")
def sample_dataset() -> Path:
    from flan_t5_detox.fixtures import SAMPLE_DATASET

    return SAMPLE_DATASET


@pytest.fixture
def train_layout(tmp_path, tiny_models, sample_dataset):
    """An /opt/ml stand-in for a small, fast training job; returns a function taking hyperparameters
    (and, for one host of several, `hosts` and `current_host`)."""
    from flan_t5_detox.contract.layout import write_training_layout

    def make(name: str = "ml", hosts=("algo-1",), current_host="algo-1", **hyperparameters):
        settings = {
            "max_ppo_steps": 3,
            "batch_size": 8,
            "mini_batch_size": 4,
            "output_min_length": 8,
            "output_max_length": 24,
            "dtype": "float32",
            "num_threads": 1,
        }
        settings.update(hyperparameters)
        channels = tiny_models.channels(sample_dataset)
        return write_training_layout(
            tmp_path / name, channels, settings, hosts=hosts, current_host=current_host
        )

    return make


def pytest_sessionfinish(session, exitstatus):
    """Tests use copies of the shipped embedded default; a run that changed the original fails."""
    from flan_t5_detox.fixtures.embedded import EmbeddedDefaultDamaged, verify

    try:
        verify()
    except EmbeddedDefaultDamaged as exc:
        print(f"\na test changed the shipped embedded default: {exc}")
        session.exitstatus = 1
