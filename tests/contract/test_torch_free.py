"""The contract layer and the launcher import and run with the ML stack made unimportable, as
on a laptop that has only `pip install ".[launcher]"`."""

import subprocess
import sys

BLOCKED = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "evaluate")

PROGRAM = f"""
import importlib, pkgutil, sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError(name + " is blocked in this test")

sys.meta_path.insert(0, Blocked())
import flan_t5_detox.contract
import detox_launcher

for package in (flan_t5_detox.contract, detox_launcher):
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(package.__name__ + "." + module.name)
from detox_launcher.cli import main
try:
    main(["--help"])
except SystemExit as exit:
    assert exit.code == 0, exit.code
loaded = sorted(name for name in sys.modules if name.split(".")[0] in {BLOCKED!r})
print("loaded:", loaded)
"""


def test_contract_and_launcher_need_no_torch():
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: detox-launch" in done.stdout
    assert done.stdout.strip().endswith("loaded: []")


def test_the_blocker_blocks():
    """The same program, made to import torch from the contract's side, fails: the test can fail."""
    program = PROGRAM.replace("import detox_launcher\n", "import detox_launcher\nimport torch\n", 1)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "torch is blocked in this test" in done.stderr
