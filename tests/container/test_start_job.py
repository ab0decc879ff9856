"""container/start-job and container/job.env without Docker: the image's environment is one file
that sh (start-job, in the image) and Python (the launcher's plain-process runs) read alike, and
the Dockerfile copies it to where start-job reads it instead of repeating it as ENV."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from detox_launcher.local_backend import (
    IMAGE_ENV_FILE,
    PASSED_THROUGH,
    PASSED_THROUGH_PREFIXES,
    read_env_file,
)

REPO = Path(__file__).resolve().parents[2]
START_JOB = REPO / "container" / "start-job"
IN_IMAGE = "/etc/flan-t5-detox/job.env"  # where the Dockerfile puts container/job.env


def test_the_dockerfile_copies_the_one_owner_and_repeats_none_of_it():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"COPY container/job.env {IN_IMAGE}\n" in dockerfile
    owned = read_env_file(IMAGE_ENV_FILE)
    assert owned and not [name for name in owned if re.search(rf"\b{name}=", dockerfile)]


def test_start_job_gives_the_job_every_variable_it_was_not_given(tmp_path):
    """start-job, run by sh here on the repository's job.env, starts its program with each of the
    file's variables, except where the caller (SageMaker's Environment, `docker run -e`) set one."""
    script, reads = START_JOB.read_text(), f"done <{IN_IMAGE}\n"
    assert reads in script
    local = tmp_path / "start-job"
    local.write_text(script.replace(reads, f"done <{IMAGE_ENV_FILE}\n"))
    owned = read_env_file(IMAGE_ENV_FILE)
    given = {"PATH": os.environ["PATH"], "TOKENIZERS_PARALLELISM": "true"}
    shown = subprocess.run(["sh", str(local), "env", "-0"], env=given, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    env = dict(item.split("=", 1) for item in shown.stdout.split("\0") if item)
    assert {name: env.get(name) for name in {**owned, **given}} == {**owned, **given}


def test_the_images_environment_is_lines_sh_reads_as_written(tmp_path):
    """job.env is KEY=value lines that sh's `read` and `export` take literally. Its variables are
    none the launcher passes through to a plain process, so which of the two wins never matters
    (in a container the caller's variables win, in a plain process the image's)."""
    owned = read_env_file(IMAGE_ENV_FILE)
    assert not [k for k in owned if k in PASSED_THROUGH or k.startswith(PASSED_THROUGH_PREFIXES)]
    bad_lines = (
        "KEY = value",
        "KEY='quoted'",
        "KEY=$HOME",
        " KEY=value",
        "KEY=two words",
        "export KEY=1",
        "KEY=1\r",
    )
    for bad in bad_lines:
        (tmp_path / "job.env").write_text(f"# a comment\n\nGOOD=1\n{bad}\n")
        with pytest.raises(ValueError, match="job.env:4: not a KEY=value line"):
            read_env_file(tmp_path / "job.env")
