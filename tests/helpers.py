"""Helpers shared by the tests: paths, ports, the log format, CLIs and services in subprocesses.

Fixtures live in conftest.py; plain functions and containers that several test modules use
live here, once.
"""
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional

import pytest
import yaml

from pipeline.local_s3 import REGION

REPO_ROOT = Path(__file__).resolve().parents[1]
__all__ = ["REGION", "REPO_ROOT"]
# The synthetic week the tests train on: a week like the notebook's (see docs/data-and-model.md).
TEST_WEEK_SEED = 4
# A line in the project's log format: LOG_FORMAT with its fields filled in. `%(funcName)s` is
# `<module>` for lines logged by a CLI block itself.
LOG_LINE = re.compile(
    r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} - (DEBUG|INFO|WARNING|ERROR|CRITICAL) - \S+\.(\S+|<module>) - "
)
START_TIMEOUT = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on the port right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def run_cli(
    args: List[str], env: Dict[str, str], cwd: Optional[Path] = None, timeout: float = 120
) -> "subprocess.CompletedProcess[str]":
    """Run a command with the test interpreter, capturing its output as text."""
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd or REPO_ROOT, capture_output=True,
        text=True, timeout=timeout,
    )


def error_lines(output: str) -> List[str]:
    """The ERROR log lines of a stage's output."""
    return [line for line in output.splitlines() if " - ERROR - " in line]


class Service(NamedTuple):
    """The serve stage (or another server) running as a subprocess, its output in a file."""

    process: "subprocess.Popen[str]"
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_service(
    args: List[str], env: Dict[str, str], tmp_path: Path, cwd: Optional[Path] = None
) -> Service:
    """Start a CLI with `--host 127.0.0.1 --port N` added, its stdout and stderr to a file."""
    port = free_port()
    log_path = tmp_path / f"serve-{port}.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, *args, "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=cwd or REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT, text=True,
        )
    return Service(process, port, log_path)


def wait_until_listening(service: Service, timeout: float = START_TIMEOUT) -> None:
    """Return once the service accepts connections; fail if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            pytest.fail(f"the service exited with {service.process.returncode}:\n{service.log()}")
        if port_accepts(service.port):
            return
        time.sleep(0.05)
    pytest.fail(f"the service did not open its port within {timeout}s:\n{service.log()}")


def wait_for_log(service: Service, text: str, timeout: float = 10.0) -> None:
    """Return once `text` is in the service's output; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while text not in service.log():
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} not logged within {timeout}s:\n{service.log()}")
        time.sleep(0.02)


def stop_service(service: Service, timeout: float = 30) -> int:
    """SIGTERM the service and return its exit code (killing it if it hangs)."""
    if service.process.poll() is None:
        service.process.send_signal(signal.SIGTERM)
    try:
        return service.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        service.process.kill()
        service.process.wait()
        raise


def logged_json(lines: List[str], marker: str) -> Any:
    """The JSON logged after `marker` on the first line that has it."""
    import json

    for line in lines:
        if marker in line:
            return json.loads(line.split(marker, 1)[1])
    raise AssertionError(f"no line with {marker!r} in the output:\n" + "\n".join(lines))


def make_stage_repo(repo: Path, serve_args: List[str], branch: str = "master") -> str:
    """Make `repo` a one-commit git repository of the working tree as it is now (tracked and
    untracked files that git does not ignore), on `branch`, for Bodywork's stage runner to
    clone over `file://` as it clones the real repository in a pod.

    Its bodywork.yaml differs from the real one only in `serve_args`, added to the serve
    stage's args (e.g. `--host 127.0.0.1`, so that the service listens on loopback only).

    Returns:
        The commit's hash.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not copied
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    config_path = repo / "bodywork.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["stages"]["serve_model"]["args"] += serve_args
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    git = ["git", "-c", "user.name=tests", "-c", "user.email=tests@localhost"]
    for command in (
        ["init", "--quiet", f"--initial-branch={branch}"],
        ["add", "--all"],
        ["commit", "--quiet", "--no-verify", "--message", "the working tree under test"],
    ):
        subprocess.run(git + command, cwd=repo, check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
    return head.stdout.strip()
