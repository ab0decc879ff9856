"""detox_launcher.cli: the console script and its help."""

from __future__ import annotations

import subprocess
import sys

import pytest
from detox_launcher.cli import main

from tests.launcher.account import BUCKET, IMAGE


def test_the_console_script_exits_cleanly_without_torch(aws, tmp_path):
    """A real process: exit code, a single error line, and torch never imported."""
    probe = (
        "import sys, runpy; sys.argv = ['detox-launch', *sys.argv[1:]]\n"
        "from detox_launcher import cli, sagemaker_backend, local_backend\n"
        "import sagemaker.estimator, sagemaker.processing\n"
        "code = cli.main()\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules]\n"
        "print('heavy modules:', heavy, file=sys.stderr); sys.exit(code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, "train", "--image", IMAGE, "--bucket", BUCKET],
        capture_output=True,
        text=True,
        env=aws.env,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "detox-launch: error: missing --role: pass --role, set DETOX_ROLE, or put it in the config file",
        "heavy modules: []",
    ]


def test_help_on_every_command(capsys):
    for command in ([], ["train"], ["evaluate"], ["pipeline"], ["wait"], ["stop"], ["list"], ["fetch"],
                    ["upload"], ["local"], ["local", "train"], ["local", "evaluate"]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        assert capsys.readouterr().out.startswith("usage: detox-launch")
