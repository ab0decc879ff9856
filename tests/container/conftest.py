"""The container tests' fixtures: the built job image (tests/container/engine.py)."""

from tests.container.engine import image  # noqa: F401 - a fixture: the image, or a skip (a failure in CI)
