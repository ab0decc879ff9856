"""The Docker engine and the job image the container tests run against, both from
`.ci/docker.sh` (DOCKER and DETOX_IMAGE name others). In CI (CI=true) their absence is a
failure, elsewhere a skip."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

DOCKER = os.environ.get("DOCKER", "docker")
IMAGE = os.environ.get("DETOX_IMAGE", "flan-t5-detox:ci")


def unavailable(problem: str, in_ci: str, elsewhere: str) -> None:
    """What is missing fails the test in CI, which must test the image, and skips it elsewhere;
    `in_ci` and `elsewhere` say what to do about it there."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{problem}; {in_ci}")
    pytest.skip(f"{problem}; {elsewhere}")


@pytest.fixture(scope="module")
def image() -> str:
    problem = None
    if shutil.which(DOCKER) is None:
        problem = f"no docker CLI ({DOCKER})"
    else:
        found = subprocess.run([DOCKER, "image", "inspect", IMAGE], capture_output=True, text=True)
        if found.returncode != 0:
            problem = f"image {IMAGE} unavailable: {(found.stderr or found.stdout).strip()[:300]}"
    if problem:
        unavailable(
            problem, "CI must build and test the image (.ci/docker.sh)", "build it with .ci/docker.sh start"
        )
    return IMAGE


def docker_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
