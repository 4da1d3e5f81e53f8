"""Fixtures for the stages' runtime image (the `image` tox environment).

`runtime_image` is the image built from the repository's Dockerfile, here, with podman: the
engine is installed and configured by image/setup_engine.sh (Debian packages, needs root),
the base is the local Debian bookworm image image/make_base.sh makes with mmdebstrap (or, if
RUNTIME_IMAGE_BASE names one, that image, pulled), and image/build.sh builds it. All three
are cached, so only the first run on a machine is slow (docs/testing.md says how slow).

Without root or apt the image cannot be built: the tests are skipped with the reason, except
under CI (CI=true), where that is a failure.

`podman(...)` runs a podman command and returns its result; `stage_repo` is a git
repository of the working tree (tests/helpers.make_stage_repo), readable by the image's user,
for Bodywork's stage runner to clone over `file://` from a read-only bind mount at /srv/repo.
"""
import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, NamedTuple

import pytest

from pipeline.settings import LOCAL
from tests.helpers import free_port, make_stage_repo

SETUP_ENGINE = LOCAL.repo_root / "image" / "setup_engine.sh"
MAKE_BASE = LOCAL.repo_root / "image" / "make_base.sh"
BUILD = LOCAL.repo_root / "image" / "build.sh"
LOCAL_BASE = "localhost/bookworm-python:3.11"
# Set (e.g. to the official python:3.11-slim-bookworm, fully qualified) where a registry can
# be reached: the base is pulled instead of made with mmdebstrap.
BASE_VARIABLE = "RUNTIME_IMAGE_BASE"
REPO_MOUNT = "/srv/repo"
IMAGE_USER = 10001
BUILD_TIMEOUT = 1800


def podman(*args: str, timeout: float = 300) -> "subprocess.CompletedProcess[str]":
    """Run `podman ARGS`, capturing its output as text; never raises on a non-zero exit."""
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


def _cannot_build(reason: str) -> None:
    """Skip the image's tests with `reason`; under CI, fail instead (a skip would hide that
    the image was never built)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the image cannot be built here, and CI must build it: {reason}")
    pytest.skip(reason)


def _run_step(command: List[str], env: Dict[str, str]) -> str:
    """Run one of image/'s scripts; fail with its output if it fails. Returns its stdout."""
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=BUILD_TIMEOUT)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="session")
def runtime_image() -> str:
    """The runtime image built from this working tree: `localhost/time-to-dispatch-runtime:TAG`."""
    if os.geteuid() != 0:
        _cannot_build("installing the container engine and building the base image need root")
    if shutil.which("podman") is None and shutil.which("apt-get") is None:
        _cannot_build("no podman, and no apt-get to install it with")
    env = dict(os.environ)
    _run_step(["bash", str(SETUP_ENGINE)], env)
    base = os.environ.get(BASE_VARIABLE, "")
    if base:
        if podman("image", "exists", base).returncode != 0:
            pulled = podman("pull", base, timeout=BUILD_TIMEOUT)
            assert pulled.returncode == 0, pulled.stderr
    else:
        base = LOCAL_BASE
        _run_step(["bash", str(MAKE_BASE)], {**env, "IMAGE": base})
    output = _run_step(["bash", str(BUILD)], {**env, "BASE_IMAGE": base})
    return output.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def serve_port() -> int:
    """The port the service listens on in these tests (on the host's loopback: containers
    share the host's network, so that the local S3 server and the service are on 127.0.0.1)."""
    return free_port()


class StageRepo(NamedTuple):
    """The repository Bodywork's stage runner clones in the container, and its commit."""

    path: Path
    commit: str

    def mount(self) -> List[str]:
        """podman arguments that mount it at /srv/repo, read-only."""
        return ["--volume", f"{self.path}:{REPO_MOUNT}:ro"]


@pytest.fixture(scope="session")
def stage_repo(tmp_path_factory: pytest.TempPathFactory, serve_port: int) -> StageRepo:
    """A git repository of the working tree whose service listens on 127.0.0.1:serve_port."""
    repo = tmp_path_factory.mktemp("repo")
    commit = make_stage_repo(repo, ["--host", LOCAL.loopback_host, "--port", str(serve_port)])
    # git refuses to clone a local repository owned by another user ("dubious ownership"), so
    # it is handed to the image's user (a clone over https, as in a pod, never asks).
    subprocess.run(["chown", "-R", f"{IMAGE_USER}:{IMAGE_USER}", str(repo)], check=True)
    return StageRepo(repo, commit)
