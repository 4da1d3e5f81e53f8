"""The whole pipeline on one machine: an embedded S3, the train stage, the serve stage.

Usage: python3 -m pipeline.run_local [--port PORT] [--s3-port PORT] [--weeks N]
       [--r2-error-threshold X] [--r2-warning-threshold Y] [--exit-after-request]
       [--bucket NAME [--endpoint-url URL] [--seed-synthetic-data]] [--in-place]

Run from the repository root with any Python 3.9+ that has pip. The module imports only the
standard library at module level, so that a bare interpreter can run it: it first makes sure
the project's virtualenv `.venv/` exists with the pinned requirements (installing them only
when `requirements_pipe.txt` or `requirements_cicd.txt` changed since the last install, which
a stamp inside `.venv` records) and re-executes itself with `.venv/bin/python`. It runs in
place, with the current interpreter, when that interpreter is `.venv`'s own, when it is
another virtualenv in which the pipeline's requirements are installed (a tox environment, say),
or when `--in-place` is given.

Then, by default, it starts moto's S3 server on 127.0.0.1 with a versioned bucket holding
several weeks of synthetic datasets, runs the train stage through its CLI, starts the serve
stage through its CLI, sends the example request, prints the response and the model's lineage,
and serves until Ctrl-C (SIGINT) or SIGTERM; then it stops the service and the S3 server and
exits 0. `--exit-after-request` stops right after the example request.

`--bucket NAME` uses an existing bucket instead (with `--endpoint-url` for an S3-compatible
server, else the standard AWS environment and credentials apply): no embedded server is
started and nothing is written to the bucket except the train stage's model, unless
`--seed-synthetic-data` asks for the synthetic datasets to be uploaded to it too.

Exit code 0: stopped as asked. Exit code 1: one ERROR line says what failed.
"""
import argparse
import hashlib
import importlib
import importlib.util
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
import venv
from pathlib import Path
from types import FrameType
from typing import IO, Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_DIR = REPO_ROOT / ".venv"
REQUIREMENT_FILES = (REPO_ROOT / "requirements_pipe.txt", REPO_ROOT / "requirements_cicd.txt")
# Written into the virtualenv after a successful install: the digest of the requirement files
# it was installed from. The same digest next time means there is nothing to install.
STAMP_FILE_NAME = ".time_to_dispatch_requirements.sha256"
PIP_LOG_FILE_NAME = "pip-install.log"
REEXECUTED_VARIABLE = "TIME_TO_DISPATCH_REEXECUTED"
# What the local run and the two stages import; if all of them are importable the current
# virtualenv is good enough to run in place.
RUNTIME_MODULES = ("boto3", "numpy", "pandas", "sklearn", "fastapi", "uvicorn")
EMBEDDED_S3_MODULES = ("moto", "flask", "werkzeug")

DESCRIPTION = "The whole pipeline on one machine: an embedded S3, the train stage, the serve stage."
HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_WEEKS = 4
LOCAL_BUCKET = "time-to-dispatch-local"
LOCAL_REGION = "eu-west-2"
# Dummy credentials: the embedded server accepts any, and real ones must never reach it.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# r² thresholds for the train stage. The synthetic weeks give a test r² near 0.975, so with a
# warning threshold above the error threshold both branches are live: below 0.9 nothing is
# persisted, between 0.9 and 0.95 the model is persisted with a drift warning.
DEFAULT_R2_ERROR_THRESHOLD = 0.9
DEFAULT_R2_WARNING_THRESHOLD = 0.95
EXAMPLE_REQUEST = {"product_code": "SKU001", "orders_placed": 112}
PREDICT_PATH = "/api/v0.1/time_to_dispatch"
LINEAGE_PATH = "/api/v0.1/model"
DOCS_PATH = "/docs"
SERVE_START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 15.0
HTTP_TIMEOUT_SECONDS = 30.0

log = logging.getLogger(__name__)


class LocalRunError(Exception):
    """A step of the local run failed; the message says which and why."""


class Stop(Exception):
    """SIGINT or SIGTERM arrived: stop everything and exit cleanly."""


class Settings(NamedTuple):
    """What the command line asked for."""

    port: int
    s3_port: int
    weeks: int
    r2_error_threshold: float
    r2_warning_threshold: float
    exit_after_request: bool
    bucket: Optional[str]
    endpoint_url: Optional[str]
    seed_synthetic_data: bool
    in_place: bool

    @property
    def embedded_s3(self) -> bool:
        return self.bucket is None


class ExampleResult(NamedTuple):
    """What the service answered to the example request and to the lineage request."""

    prediction: Dict[str, Any]
    lineage: Dict[str, Any]


def main(settings: Settings) -> None:
    """Run the pipeline locally and serve until stopped.

    Raises:
        LocalRunError: a step failed (S3, train stage, serve stage, example request).
        Stop: SIGINT or SIGTERM arrived; everything started has been stopped by then.
    """
    s3_server = None
    service: Optional["Child"] = None
    try:
        if settings.embedded_s3:
            s3_server, endpoint = start_embedded_s3(settings.s3_port)
            bucket = LOCAL_BUCKET
            create_versioned_bucket(bucket)
            log.info(f"embedded S3 at {endpoint}, versioned bucket s3://{bucket}")
        else:
            bucket = str(settings.bucket)
            use_real_bucket(bucket, settings.endpoint_url)
        if settings.embedded_s3 or settings.seed_synthetic_data:
            newest = seed_synthetic_datasets(bucket, settings.weeks)
            if settings.embedded_s3:  # in a real bucket, newer real datasets may exist
                log.info(f"the train stage will pick the newest dataset: s3://{bucket}/{newest}")
        run_train_stage(bucket, settings.r2_error_threshold, settings.r2_warning_threshold)
        service = start_serve_stage(bucket, settings.port)
        base_url = f"http://{HOST}:{settings.port}"
        wait_for_port(HOST, settings.port, service, SERVE_START_TIMEOUT_SECONDS)
        report_example(request_example(base_url), bucket)
        log.info(f"API docs: {base_url}{DOCS_PATH}")
        if settings.exit_after_request:
            log.info("--exit-after-request: stopping")
            return
        log.info(f"serving on {base_url} until Ctrl-C")
        code = service.process.wait()
        raise LocalRunError(f"the serve stage exited by itself with code {code}")
    finally:
        with _signals_ignored():
            if service is not None:
                service.stop(STOP_TIMEOUT_SECONDS)
            if s3_server is not None:
                s3_server.stop()
                log.info("embedded S3 stopped")


# --- the steps -----------------------------------------------------------------------------


def start_embedded_s3(port: int) -> Tuple[Any, str]:
    """Start moto's S3 server on 127.0.0.1 and point this process (and its children) at it.

    Returns:
        The running server and its endpoint URL.

    Raises:
        LocalRunError: if the port cannot be bound.
    """
    # moto is a development requirement, never deployed; imported by name so that type
    # checking for the production Python (3.9) does not follow it into libraries that use
    # 3.10-only syntax.
    threaded_moto_server = importlib.import_module("moto.server").ThreadedMotoServer

    # One line per S3 request would bury the pipeline's own story.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    if port and not port_is_free(HOST, port):
        raise LocalRunError(f"cannot start the embedded S3: port {port} on {HOST} is in use; "
                            "pass another --s3-port (0 picks a free one)")
    server = threaded_moto_server(ip_address=HOST, port=port, verbose=False)
    server.start()
    host, bound_port = server.get_host_and_port()
    endpoint = f"http://{host}:{bound_port}"
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        os.environ.pop(name, None)
    os.environ.update(LOCAL_CREDENTIALS)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    os.environ["AWS_DEFAULT_REGION"] = LOCAL_REGION
    _bypass_proxies_for_loopback()
    return server, endpoint


def create_versioned_bucket(bucket: str) -> None:
    """Create a bucket with versioning on, as production's is.

    Raises:
        LocalRunError: if S3 refuses.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from pipeline.storage import s3_client

    client = s3_client()
    try:
        client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": LOCAL_REGION})
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    except (ClientError, BotoCoreError) as error:
        raise LocalRunError(f"cannot create the bucket s3://{bucket}: {error}") from error


def use_real_bucket(bucket: str, endpoint_url: Optional[str]) -> None:
    """Point this process and its children at an existing bucket; the AWS environment applies."""
    if endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = endpoint_url
    where = os.environ.get("AWS_ENDPOINT_URL") or "AWS (endpoint from the standard AWS configuration)"
    log.info(f"using the existing bucket s3://{bucket} at {where}; no embedded S3 started")


def seed_synthetic_datasets(bucket: str, weeks: int) -> str:
    """Upload `weeks` consecutive synthetic weekly datasets, as data engineering would drop them.

    Returns:
        The key of the newest dataset.

    Raises:
        LocalRunError: if an upload fails.
    """
    from pipeline.storage import StorageError, put_dataset, s3_client
    from pipeline.synthetic import generate_weeks

    client = s3_client()
    key = ""
    try:
        for week in generate_weeks(weeks):
            key = put_dataset(bucket, week.data, week.timestamp, client)
            log.info(f"uploaded synthetic dataset s3://{bucket}/{key} ({len(week.data)} rows)")
    except StorageError as error:
        raise LocalRunError(f"cannot upload the synthetic datasets: {error}") from error
    return key


def run_train_stage(bucket: str, error_threshold: float, warning_threshold: float) -> None:
    """Run the train stage's CLI as a subprocess, forwarding its log lines as they come.

    Raises:
        LocalRunError: if it exits non-zero (its own ERROR line says why).
    """
    command = [sys.executable, "-m", "pipeline.train_model", bucket, str(error_threshold),
               str(warning_threshold)]
    log.info(f"running the train stage: {_display(command)}")
    train = Child.start(command, "train stage")
    try:
        code = train.wait_forwarding()
    finally:
        with _signals_ignored():
            train.stop(STOP_TIMEOUT_SECONDS)
    if code != 0:
        raise LocalRunError(f"the train stage exited with code {code}; no model to serve")


def start_serve_stage(bucket: str, port: int) -> "Child":
    """Start the serve stage's CLI as a subprocess on 127.0.0.1:`port`.

    Raises:
        LocalRunError: if the port is already in use.
    """
    if not port_is_free(HOST, port):
        raise LocalRunError(f"port {port} on {HOST} is in use; pass another --port")
    command = [sys.executable, "-m", "pipeline.serve_model", bucket, "--host", HOST, "--port", str(port)]
    log.info(f"starting the serve stage: {_display(command)}")
    service = Child.start(command, "serve stage")
    service.forward_in_background()
    return service


def wait_for_port(host: str, port: int, service: "Child", timeout: float) -> None:
    """Wait until the service accepts TCP connections: it opens its port once a model is ready.

    Raises:
        LocalRunError: if the service exits first or the timeout passes.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = service.process.poll()
        if code is not None:
            raise LocalRunError(f"the serve stage exited with code {code} before opening port {port}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                log.info(f"the serve stage is ready on http://{host}:{port}")
                return
        except OSError:
            time.sleep(0.1)
    raise LocalRunError(f"the serve stage did not open port {port} within {timeout:.0f}s")


def request_example(base_url: str) -> ExampleResult:
    """POST the example request, then GET the model's lineage.

    Raises:
        LocalRunError: if either request fails or does not answer JSON.
    """
    log.info(f"example request: POST {base_url}{PREDICT_PATH} {json.dumps(EXAMPLE_REQUEST)}")
    prediction = _http_json("POST", f"{base_url}{PREDICT_PATH}", EXAMPLE_REQUEST)
    log.info(f"response: {json.dumps(prediction)}")
    lineage = _http_json("GET", f"{base_url}{LINEAGE_PATH}")
    log.info(f"model lineage (GET {LINEAGE_PATH}): {json.dumps(lineage, sort_keys=True)}")
    return ExampleResult(prediction, lineage)


def report_example(result: ExampleResult, bucket: str) -> None:
    """Summarise, from the lineage, what the model was trained on, how good it is and where it is."""
    lineage = result.lineage
    dataset = lineage.get("dataset") or {}
    metrics = lineage.get("metrics") or {}
    log.info(
        f"the model was trained on s3://{dataset.get('bucket', bucket)}/{dataset.get('key')} "
        f"(ETag {dataset.get('etag')}, version {dataset.get('version_id')}); "
        f"test r²={_number(metrics.get('r_squared'))}, MAE={_number(metrics.get('mean_absolute_error'))} hours"
    )
    log.info(f"the model artefact is at s3://{bucket}/{lineage.get('artefact_key')}")
    log.info(
        f"SKU001 with 112 orders placed: {_number(result.prediction.get('est_hours_to_dispatch'))} "
        f"hours to dispatch (model {result.prediction.get('model_version')})"
    )


# --- child processes -----------------------------------------------------------------------


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
    def start(cls, command: Sequence[str], name: str) -> "Child":
        process = subprocess.Popen(
            list(command), cwd=REPO_ROOT, env=child_environment(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
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
        self._stdout.close()

    @property
    def _stdout(self) -> IO[str]:
        assert self.process.stdout is not None  # always piped by `start`
        return self.process.stdout


def child_environment() -> Dict[str, str]:
    """This process's environment (AWS settings included) with the repo root on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    # Lines must reach the terminal as they are logged, not when a pipe buffer fills.
    env["PYTHONUNBUFFERED"] = "1"
    if not env.get("GIT_COMMIT_HASH"):
        env["GIT_COMMIT_HASH"] = _git_commit()
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


# --- the virtualenv ------------------------------------------------------------------------


def requirements_digest(paths: Sequence[Path]) -> str:
    """SHA-256 over the names and contents of the requirement files, in order.

    Raises:
        OSError: if a file cannot be read.
    """
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode("utf-8") + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def read_stamp(venv_dir: Path) -> Optional[str]:
    """The digest recorded by the last successful install into `venv_dir`, if any."""
    try:
        return (venv_dir / STAMP_FILE_NAME).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def write_stamp(venv_dir: Path, digest: str) -> None:
    """Record that `venv_dir` holds the requirements with this digest."""
    (venv_dir / STAMP_FILE_NAME).write_text(digest + "\n", encoding="utf-8")


def install_needed(venv_dir: Path, digest: str) -> bool:
    """True unless the last successful install into `venv_dir` was of exactly these requirements."""
    return read_stamp(venv_dir) != digest


def venv_python(venv_dir: Path) -> Path:
    """The interpreter of a virtualenv."""
    if os.name == "nt":
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"


def missing_modules(names: Sequence[str]) -> List[str]:
    """The top-level modules among `names` that the current interpreter cannot import."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def in_project_venv() -> bool:
    """Whether this interpreter is the one of the project's `.venv`."""
    return Path(sys.prefix).resolve() == VENV_DIR.resolve()


def in_other_ready_venv(required: Sequence[str]) -> bool:
    """Whether this interpreter is some other virtualenv in which `required` all import."""
    return sys.prefix != sys.base_prefix and not missing_modules(required)


def ensure_project_venv(venv_dir: Path, requirement_files: Sequence[Path]) -> Path:
    """Create the virtualenv if needed and install the requirements if they changed.

    Returns:
        The virtualenv's interpreter.

    Raises:
        LocalRunError: if the virtualenv cannot be created or pip fails.
    """
    python = venv_python(venv_dir)
    if not _runs(python):
        log.info(f"creating the virtualenv {venv_dir} (first run only)")
        try:
            venv.EnvBuilder(with_pip=True, clear=venv_dir.exists()).create(venv_dir)
        except (OSError, subprocess.CalledProcessError) as error:
            raise LocalRunError(f"cannot create the virtualenv {venv_dir}: {error}") from error
    digest = requirements_digest(requirement_files)
    if not install_needed(venv_dir, digest):
        log.info(f"{venv_dir} already has the pinned requirements; nothing to install")
        return python
    names = " and ".join(path.name for path in requirement_files)
    log.info(f"installing the pinned requirements ({names}) into {venv_dir}; "
             "this takes a minute or two, and only happens when they change")
    started = time.monotonic()
    command = [str(python), "-m", "pip", "install"]
    for path in requirement_files:
        command += ["-r", str(path)]
    # pip's own output is not in the project's log format: it goes to a file, read on failure.
    pip_log = venv_dir / PIP_LOG_FILE_NAME
    with open(pip_log, "w", encoding="utf-8") as output:
        code = subprocess.call(command, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT)
    if code != 0:
        raise LocalRunError(f"pip could not install the requirements into {venv_dir} (exit code {code}): "
                            f"{_last_line(pip_log)}; pip's whole output is in {pip_log}")
    write_stamp(venv_dir, digest)
    log.info(f"requirements installed in {time.monotonic() - started:.0f}s")
    return python


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    return next((line for line in reversed(lines) if line), "no output")


def _runs(python: Path) -> bool:
    if not python.exists():
        return False
    try:
        return subprocess.call([str(python), "-c", "import sys"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=60) == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# --- small helpers -------------------------------------------------------------------------


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


def _http_json(method: str, url: str, body: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    # Loopback traffic must never go through a proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=HTTP_TIMEOUT_SECONDS) as response:
            answer = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as error:
        detail = error.read().decode("utf-8", "replace")[:500]
        raise LocalRunError(f"{method} {url} answered {error.code}: {detail}") from error
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise LocalRunError(f"{method} {url} failed: {error}") from error
    if not isinstance(answer, dict):
        raise LocalRunError(f"{method} {url} answered {type(answer).__name__}, not a JSON object")
    return answer


def _bypass_proxies_for_loopback() -> None:
    for name in ("NO_PROXY", "no_proxy"):
        hosts = [h for h in os.environ.get(name, "").split(",") if h]
        os.environ[name] = ",".join(hosts + [h for h in (HOST, "localhost") if h not in hosts])


def _git_commit() -> str:
    try:
        result = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "unknown"


def _display(command: Sequence[str]) -> str:
    return " ".join(["python" if i == 0 else part for i, part in enumerate(command)])


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else str(value)


class _signals_ignored:
    """Ignore SIGINT and SIGTERM while stopping, so a second Ctrl-C cannot leave orphans."""

    def __enter__(self) -> None:
        self._saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


def _raise_stop(signum: int, frame: Optional[FrameType]) -> None:
    raise Stop(signal.Signals(signum).name)


# --- command line --------------------------------------------------------------------------


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise _ArgumentError(message)


def parse_args(argv: Sequence[str]) -> Settings:
    """Parse the command line.

    Raises:
        ValueError: with the reason, for any bad argument.
    """
    parser = _Parser(prog="python3 -m pipeline.run_local", description=DESCRIPTION)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port of the serve stage on {HOST} (default {DEFAULT_PORT})")
    parser.add_argument("--s3-port", type=int, default=0,
                        help="port of the embedded S3 server (default 0: any free port)")
    parser.add_argument("--weeks", type=int, default=DEFAULT_WEEKS,
                        help=f"synthetic weekly datasets to upload (default {DEFAULT_WEEKS})")
    parser.add_argument("--r2-error-threshold", type=float, default=DEFAULT_R2_ERROR_THRESHOLD)
    parser.add_argument("--r2-warning-threshold", type=float, default=DEFAULT_R2_WARNING_THRESHOLD)
    parser.add_argument("--exit-after-request", action="store_true",
                        help="stop after the example request instead of serving until Ctrl-C")
    parser.add_argument("--bucket", help="use this existing bucket instead of the embedded S3")
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint of --bucket")
    parser.add_argument("--seed-synthetic-data", action="store_true",
                        help="also upload the synthetic datasets to --bucket")
    parser.add_argument("--in-place", action="store_true",
                        help="run with the current interpreter; never create or update .venv")
    try:
        args = parser.parse_args(list(argv))
    except _ArgumentError as error:
        raise ValueError(str(error)) from None
    for name, value in (("--port", args.port), ("--s3-port", args.s3_port)):
        if not 0 <= value <= 65535 or (name == "--port" and value == 0):
            raise ValueError(f"{name} must be a TCP port, got {value}")
    if args.weeks < 1:
        raise ValueError(f"--weeks must be at least 1, got {args.weeks}")
    if args.bucket is not None and not args.bucket.strip():
        raise ValueError("--bucket is empty")
    if args.bucket is None and (args.endpoint_url or args.seed_synthetic_data):
        raise ValueError("--endpoint-url and --seed-synthetic-data apply only with --bucket")
    return Settings(
        args.port, args.s3_port, args.weeks, args.r2_error_threshold, args.r2_warning_threshold,
        args.exit_after_request, args.bucket, args.endpoint_url, args.seed_synthetic_data, args.in_place,
    )


def _run_in_place_or_reexecute(settings: Settings, argv: Sequence[str]) -> None:
    required = list(RUNTIME_MODULES) + (list(EMBEDDED_S3_MODULES) if settings.embedded_s3 else [])
    if settings.in_place:
        missing = missing_modules(required)
        if missing:
            raise LocalRunError(f"--in-place, but {sys.executable} cannot import {', '.join(missing)}; "
                                "run without --in-place to use the project's .venv")
        log.info(f"running in place with {sys.executable} (--in-place)")
        return
    # Set by the bare interpreter that checked .venv and re-executed this module with it.
    reexecuted = os.environ.pop(REEXECUTED_VARIABLE, None) is not None
    if in_project_venv():
        if not reexecuted:
            ensure_project_venv(VENV_DIR, REQUIREMENT_FILES)
        return
    if in_other_ready_venv(required):
        log.info(f"running in place with the virtualenv {sys.prefix}: it has the pipeline's requirements")
        return
    if reexecuted:
        raise LocalRunError(f"re-executed with {sys.executable}, which is still not the project's .venv")
    python = ensure_project_venv(VENV_DIR, REQUIREMENT_FILES)
    log.info(f"continuing with {python}")
    sys.stdout.flush()
    env = {**os.environ, REEXECUTED_VARIABLE: "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    os.chdir(REPO_ROOT)
    # Replacing this process (rather than starting a child) keeps one process for the terminal
    # to signal: Ctrl-C reaches the local run itself.
    os.execve(str(python), [str(python), "-m", "pipeline.run_local", *argv], env)


def cli(argv: Sequence[str]) -> int:
    """The entry point: parse, set up the interpreter, run; map failures to exit codes."""
    # pipeline.utils imports only the standard library, like this module.
    from pipeline.utils import configure_logger

    configure_logger()
    try:
        settings = parse_args(argv)
    except ValueError as error:
        log.error(f"Invalid arguments passed to run_local.py: {error}")
        return 1
    if sys.version_info < (3, 9):
        log.error(f"run_local needs Python 3.9 or later, this is {sys.version.split()[0]}")
        return 1
    signal.signal(signal.SIGTERM, _raise_stop)
    try:
        _run_in_place_or_reexecute(settings, argv)
        main(settings)
    except (Stop, KeyboardInterrupt) as stop:
        log.info(f"stopped ({stop if isinstance(stop, Stop) else 'SIGINT'}); nothing left running")
        return 0
    except LocalRunError as error:
        log.error(f"run_local failed: {error}")
        return 1
    except Exception as error:  # the one ERROR line must also cover the unforeseen
        log.error(f"run_local failed unexpectedly: {error!r}")
        return 1
    log.info("stopped; nothing left running")
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
