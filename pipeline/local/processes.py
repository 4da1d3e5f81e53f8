"""The local run's child processes, ports and HTTP: standard library only.

A stage runs as a subprocess whose output is forwarded line by line, unchanged, to ours; it
is stopped in order (SIGTERM, then SIGKILL after a timeout). The local run imports this
module before its virtualenv is ready, so nothing here may import a third-party library.
"""
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import IO, Any, Dict, Optional, Sequence

from pipeline.settings import ENVIRONMENT, LOCAL


log = logging.getLogger(__name__)


class LocalProcessError(Exception):
    """A child process or an HTTP exchange with it failed; the message says which and why."""


class Child:
    """A stage running as a subprocess, its output forwarded line by line to ours, unchanged.

    Each child gets a session of its own, so a Ctrl-C in the terminal reaches only the local
    run, which then stops the child in order (SIGTERM, then SIGKILL after a timeout) instead
    of every process handling the same SIGINT at once.
    """

    def __init__(self, process: "subprocess.Popen[str]", name: str) -> None:
        self.process = process
        self.name = name
        self._forwarder: Optional[threading.Thread] = None

    @classmethod
    def start(cls, command: Sequence[str], name: str, log_file: Optional[IO[str]] = None) -> "Child":
        """Start `command`; its output is piped (to forward) or, with `log_file`, written there
        (a server whose lines are not in the pipeline's log format)."""
        process = subprocess.Popen(
            list(command), cwd=LOCAL.repo_root, env=child_environment(), stdin=subprocess.DEVNULL,
            stdout=log_file or subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            start_new_session=True,
        )
        log.info(f"{name} started (pid {process.pid})")
        return cls(process, name)

    def wait_forwarding(self) -> int:
        """Forward the child's output until it closes, then return its exit code."""
        _forward_lines(self._stdout)
        return self.process.wait()

    def forward_in_background(self) -> None:
        self._forwarder = threading.Thread(
            target=_forward_lines, args=(self._stdout,), name=f"{self.name} output", daemon=True
        )
        self._forwarder.start()

    def stop(self, timeout: float) -> None:
        """Terminate the child if it still runs, wait for it and for the rest of its output."""
        if self.process.poll() is None:
            log.info(f"stopping the {self.name} (pid {self.process.pid})")
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning(f"the {self.name} did not stop within {timeout:.0f}s; killing it")
                self.process.kill()
                self.process.wait()
            log.info(f"the {self.name} stopped (exit code {self.process.returncode})")
        if self._forwarder is not None:
            self._forwarder.join(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()

    @property
    def _stdout(self) -> IO[str]:
        assert self.process.stdout is not None  # always piped by `start`
        return self.process.stdout


def child_environment() -> Dict[str, str]:
    """This process's environment (AWS settings included) with the repo root on PYTHONPATH."""
    env = dict(os.environ)
    env[ENVIRONMENT.python_path] = os.pathsep.join(
        filter(None, [str(LOCAL.repo_root), env.get(ENVIRONMENT.python_path)]))
    # Lines must reach the terminal as they are logged, not when a pipe buffer fills.
    env["PYTHONUNBUFFERED"] = "1"
    if not env.get(ENVIRONMENT.git_commit):
        env[ENVIRONMENT.git_commit] = git_commit()
    return env


def _forward_lines(stream: IO[str]) -> None:
    # Written under the log handler's lock so that a forwarded line and one of our own log
    # lines never interleave mid-line.
    lock = _output_lock()
    try:
        for line in stream:
            with lock:
                sys.stdout.write(line)
                sys.stdout.flush()
    except (ValueError, OSError):
        pass  # the pipe was closed while stopping


def _output_lock() -> Any:
    for handler in logging.getLogger().handlers:
        if getattr(handler, "_time_to_dispatch", False) and handler.lock is not None:
            return handler.lock
    return threading.Lock()


def free_port(host: str) -> int:
    """A TCP port of `host` that is free right now (the system picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on a TCP port of `host` right now.

    Probed as servers bind (with SO_REUSEADDR), so that connections of a previous run still
    in TIME_WAIT do not count as "in use"; a listening socket does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def http_json(method: str, url: str, body: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Send a request (with a JSON body if given) and return the JSON object answered.

    Raises:
        LocalProcessError: on an HTTP error status, no answer, or an answer that is not an object.
    """
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    # Loopback traffic must never go through a proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=LOCAL.http_timeout_seconds) as response:
            answer = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as error:
        detail = error.read().decode("utf-8", "replace")[:500]
        raise LocalProcessError(f"{method} {url} answered {error.code}: {detail}") from error
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise LocalProcessError(f"{method} {url} failed: {error}") from error
    if not isinstance(answer, dict):
        raise LocalProcessError(f"{method} {url} answered {type(answer).__name__}, not a JSON object")
    return answer


def git_commit() -> str:
    """The checked-out commit of the repository, or "unknown"."""
    try:
        result = subprocess.run(["git", "-C", str(LOCAL.repo_root), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "unknown"


class signals_ignored:
    """Ignore SIGINT and SIGTERM while stopping, so a second Ctrl-C cannot leave orphans."""

    def __enter__(self) -> None:
        self._saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


def wait_for_port(host: str, port: int, service: Child, timeout: float) -> None:
    """Wait until the service accepts TCP connections: it opens its port once a model is ready.

    Raises:
        LocalProcessError: if the service exits first or the timeout passes.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = service.process.poll()
        if code is not None:
            raise LocalProcessError(f"the {service.name} exited with code {code} before opening port {port}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                log.info(f"the {service.name} is ready on http://{host}:{port}")
                return
        except OSError:
            time.sleep(0.1)
    raise LocalProcessError(f"the {service.name} did not open port {port} within {timeout:.0f}s")


def wait_for_ready(url: str, service: Child, timeout: float) -> None:
    """Wait until GET `url` answers 200 (a stage's readiness endpoint).

    Raises:
        LocalProcessError: if the service exits first or the timeout passes.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = service.process.poll()
        if code is not None:
            raise LocalProcessError(f"the {service.name} exited with code {code} before it was ready")
        try:
            with opener.open(url, timeout=1.0) as response:
                if response.status == 200:
                    log.info(f"the {service.name} is ready ({url})")
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise LocalProcessError(f"the {service.name} was not ready within {timeout:.0f}s ({url})")
