"""Fixtures for the checks made with Bodywork's own code (the `bodywork` tox environment).

`bodywork_config` is bodywork.yaml as Bodywork's parser reads it. `stage_repo` is a git
repository made from the working tree as it is now (tracked and untracked files that git
does not ignore), committed on `master`, for Bodywork's stage runner to clone over `file://`
exactly as it clones the real repository in a pod; its bodywork.yaml differs from the
real one only in that the service listens on 127.0.0.1.
"""
from pathlib import Path
from typing import Iterator

import pytest
from bodywork.config import BodyworkConfig

from pipeline.settings import LOCAL
from tests.helpers import make_stage_repo

BRANCH = "master"


@pytest.fixture(scope="session")
def bodywork_config() -> BodyworkConfig:
    """bodywork.yaml parsed and validated by Bodywork, with the stage modules checked to exist."""
    return BodyworkConfig(LOCAL.repo_root / "bodywork.yaml", check_py_modules_exist=True)


@pytest.fixture(scope="session")
def stage_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A one-commit git repository holding the current working tree, on branch `master`."""
    repo = tmp_path_factory.mktemp("repo")
    # The one change from production: the service listens on loopback only (see
    # test_stage_runner.py); its port and everything else stay as configured.
    make_stage_repo(repo, ["--host", LOCAL.loopback_host], BRANCH)
    yield repo
