"""Each stage's requirements, as Bodywork reads them, install in the production image, and
pin everything that gets installed there.

The bodywork-core:3.0 image runs CPython 3.9 on x86_64 Linux (python:3.9-slim on Debian 11,
glibc 2.31), and pip-installs the stage's `requirements` at every start. pip's own
cross-version mode (`pip install --dry-run --python-version 3.9 --platform ...`) picks wheels
for 3.9 but evaluates dependency markers for the Python running pip, so it misses what only
applies below 3.10 or 3.11 (botocore's `urllib3<1.27` on Python < 3.10, anyio's
`exceptiongroup` on Python < 3.11). uv resolves for a target Python and platform with the
markers evaluated for that target, wheels only. This needs the package index.
"""
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from bodywork.config import BodyworkConfig

TARGET_PYTHON = "3.9"
# manylinux_2_31 admits every wheel built for glibc 2.31 or older (manylinux2014 is 2.17).
TARGET_PLATFORM = "x86_64-manylinux_2_31"
STAGES = ("train_model", "serve_model")


def pinned(requirement: str) -> Tuple[str, str]:
    """(normalised name, version) of a `name==version[; marker]` line."""
    match = re.match(r"\s*([A-Za-z0-9._-]+)\s*==\s*([^\s;]+)", requirement)
    assert match is not None, f"{requirement!r} is not pinned with =="
    return re.sub(r"[-_.]+", "-", match.group(1)).lower(), match.group(2)


@pytest.fixture(scope="module")
def resolutions(
    bodywork_config: BodyworkConfig, tmp_path_factory: pytest.TempPathFactory
) -> Dict[str, "subprocess.CompletedProcess[str]"]:
    """uv's resolution of each stage's requirements for CPython 3.9 on manylinux x86_64."""
    results = {}
    for stage in STAGES:
        requirements = tmp_path_factory.mktemp(stage) / "requirements.txt"
        requirements.write_text("\n".join(bodywork_config.stages[stage].requirements) + "\n")
        results[stage] = subprocess.run(
            [sys.executable, "-m", "uv", "pip", "compile", str(requirements), "--no-config",
             "--python-version", TARGET_PYTHON, "--python-platform", TARGET_PLATFORM,
             "--only-binary", ":all:", "--no-header", "--no-annotate", "--quiet"],
            capture_output=True, text=True, timeout=300, cwd=Path(requirements).parent,
        )
    return results


def installed(result: "subprocess.CompletedProcess[str]") -> List[Tuple[str, str]]:
    """The (name, version) pairs a resolution installs."""
    lines = [line.strip() for line in result.stdout.splitlines()]
    return [pinned(line) for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("stage", STAGES)
def test_stage_requirements_install_from_wheels_on_python_3_9(
    stage: str, resolutions: Dict[str, "subprocess.CompletedProcess[str]"]
) -> None:
    result = resolutions[stage]
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("stage", STAGES)
def test_stage_requirements_pin_everything_installed_on_python_3_9(
    stage: str, resolutions: Dict[str, "subprocess.CompletedProcess[str]"], bodywork_config: BodyworkConfig
) -> None:
    """Nothing the stage installs in production is left to float to a newer version."""
    result = resolutions[stage]
    assert result.returncode == 0, result.stderr
    pins = {pinned(line) for line in bodywork_config.stages[stage].requirements}
    assert sorted(set(installed(result)) - pins) == []
