"""Fixtures for the checks made with Bodywork's own code (the `bodywork` tox environment).

`bodywork_config` is bodywork.yaml as Bodywork's parser reads it. `stage_repo` is a git
repository made from the working tree as it is now (tracked and untracked files that git
does not ignore), committed on `master`, for Bodywork's stage runner to clone over `file://`
exactly as it clones the real repository in a pod; its bodywork.yaml differs from the
real one only in that the service listens on 127.0.0.1.
"""
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from bodywork.config import BodyworkConfig

from tests.helpers import REPO_ROOT

BRANCH = "master"


@pytest.fixture(scope="session")
def bodywork_config() -> BodyworkConfig:
    """bodywork.yaml parsed and validated by Bodywork, with the stage modules checked to exist."""
    return BodyworkConfig(REPO_ROOT / "bodywork.yaml", check_py_modules_exist=True)


@pytest.fixture(scope="session")
def stage_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A one-commit git repository holding the current working tree, on branch `master`."""
    repo = tmp_path_factory.mktemp("repo")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not copied
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    # The one change from production: the service listens on loopback only (see
    # test_stage_runner.py); its port and everything else stay as configured.
    config_path = repo / "bodywork.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["stages"]["serve_model"]["args"] += ["--host", "127.0.0.1"]
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    git = ["git", "-c", "user.name=tests", "-c", "user.email=tests@localhost"]
    for command in (
        ["init", "--quiet", f"--initial-branch={BRANCH}"],
        ["add", "--all"],
        ["commit", "--quiet", "--no-verify", "--message", "the working tree under test"],
    ):
        subprocess.run(git + command, cwd=repo, check=True)
    yield repo
