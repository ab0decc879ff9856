"""The image's default build (CPython 3.10, manylinux x86-64) cannot run here, but its lock can be
checked: every pin of container/requirements.lock that applies to Python 3.10 resolves to a
CPython 3.10 wheel for manylinux x86-64 on the package index pip is configured with."""

import json
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

LOCK = Path(__file__).resolve().parents[2] / "container" / "requirements.lock"
# sentencepiece 0.2.1+ ships cp310 wheels only as manylinux_2_28; older pins as manylinux2014.
PLATFORMS = ["manylinux2014_x86_64", *(f"manylinux_2_{minor}_x86_64" for minor in range(28, 36))]
SOURCE_ONLY = {"rouge-score"}  # pure Python, published as an sdist only
PY310 = {"python_version": "3.10", "python_full_version": "3.10.14", "implementation_name": "cpython"}


def pins_for_python_310() -> list[str]:
    pins = []
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(PY310):
            if requirement.name.replace("_", "-").lower() not in SOURCE_ONLY:
                pins.append(f"{requirement.name}{requirement.specifier}")
    return pins


def test_the_lock_has_one_pin_per_package_for_python_310():
    pins = pins_for_python_310()
    names = [Requirement(p).name.lower() for p in pins]
    assert len(names) == len(set(names)) and "torch" in names and "transformers" in names
    assert all("==" in p for p in pins)


def test_every_pin_resolves_to_a_cpython_310_manylinux_wheel(tmp_path):
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps",
        "--only-binary=:all:", "--python-version", "3.10", "--implementation", "cp", "--abi", "cp310",
        "--abi", "abi3", "--abi", "none", *platforms, "--target", str(tmp_path), "--quiet", "--report", "-",
        *pins_for_python_310(),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    resolved = {item["metadata"]["name"].lower().replace("_", "-"): item for item in report["install"]}
    wanted = {Requirement(p).name.lower().replace("_", "-") for p in pins_for_python_310()}
    assert set(resolved) == wanted
    wheels = [item["download_info"]["url"].rsplit("/", 1)[-1] for item in resolved.values()]
    assert all(w.endswith(".whl") for w in wheels), [w for w in wheels if not w.endswith(".whl")]
    assert all(("cp310" in w or "py3" in w or "abi3" in w) for w in wheels)
