"""Fixtures of the contract tests: the stages' real CLIs and service, a local S3 server, and a
small S3 proxy that trickles answers or holds multipart parts.

This folder is self-contained on purpose. Its tests run unchanged against older commits of the
project too (docs/reliability.md, "Round two: shown on 7ab96a0"), whose modules have other
paths and names: so it imports nothing from `pipeline` but the synthetic data generator (test
data, not code under test), nothing from `tests.helpers`, and uses only what the contracts of
/work/shared/PRODUCT.md name: the CLIs in subprocesses, HTTP to the service, plain boto3
against moto's server on loopback selected by AWS_ENDPOINT_URL, and environment variables.
The contract's names and paths are written out here as the product brief states them, not
read from `pipeline.settings` (which older commits lack).
"""
import logging
import os
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import boto3
import pytest
from moto.server import ThreadedMotoServer

try:
    from pipeline.local.synthetic import generate_orders
except ImportError:  # the flat layout of older commits
    from pipeline.synthetic import generate_orders  # type: ignore[no-redef]

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
REGION = "eu-west-2"
SIGNING_KEY = "contract:" + "0123456789abcdef" * 4
# The newest week of the seeded bucket, and a later one for the weeks the tests drop.
SEED_WEEK_KEY = "datasets/time_to_dispatch_2026-11-20T23:00:00.csv"
LATER_WEEK_KEY = "datasets/time_to_dispatch_2026-11-27T23:00:00.csv"
# How long a service may take to load its model and open its port on a loaded machine.
START_TIMEOUT = 90.0


def stage_environment(endpoint: str) -> Dict[str, str]:
    """The environment an engineer gives a stage pointed at an S3-compatible server."""
    env = {name: value for name, value in os.environ.items()
           if name not in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")}
    env.update({
        "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "MODEL_SIGNING_KEY": SIGNING_KEY, "PYTHONPATH": str(REPO_ROOT),
        "NO_PROXY": LOOPBACK, "no_proxy": LOOPBACK,
    })
    return env


def run_cli(args: List[str], env: Dict[str, str], timeout: float = 300) -> "subprocess.CompletedProcess[str]":
    """`python ARGS` from the repository's root; stdout and stderr together."""
    return subprocess.run([sys.executable, *args], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1):
            return True
    except OSError:
        return False


class Service(NamedTuple):
    """A serve stage started as `python -m pipeline.serve_model BUCKET --host ... --port PORT ...`."""

    process: "subprocess.Popen[bytes]"
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready_or_exit(self, timeout: float) -> str:
        """"ready" once the port accepts, "exited" if the process ends first, else "running"."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return "exited"
            if port_accepts(self.port):
                return "ready"
            time.sleep(0.2)
        return "running"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_service(bucket: str, env: Dict[str, str], folder: Path, *options: str) -> Service:
    port = free_port()
    log_path = folder / f"serve-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.serve_model", bucket, "--host", LOOPBACK, "--port", str(port), *options],
            env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    return Service(process, port, log_path)


def new_bucket(client: Any) -> str:
    name = f"contract-{os.urandom(6).hex()}"
    client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def keys_under(client: Any, bucket: str, prefix: str) -> List[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def copy_bucket(client: Any, source: str, prefixes: Tuple[str, ...]) -> str:
    """A new bucket holding copies (bytes and metadata) of `source`'s objects under `prefixes`:
    a model is signed for its key, not its bucket, so the copies load as the originals do."""
    target = new_bucket(client)
    for prefix in prefixes:
        for key in keys_under(client, source, prefix):
            client.copy_object(Bucket=target, Key=key, CopySource={"Bucket": source, "Key": key},
                               MetadataDirective="COPY")
    return target


def week_csv(frame: Any) -> bytes:
    return str(frame.to_csv(index=False)).encode()


# --- the local S3 server and the seeded bucket ----------------------------------------------

@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback, for the session."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per S3 request would bury the rest
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def env(s3_endpoint: str) -> Dict[str, str]:
    """The stages' environment, pointed at the local S3 server."""
    return stage_environment(s3_endpoint)


@pytest.fixture(scope="session")
def s3(s3_endpoint: str) -> Any:
    """A plain boto3 client of the local S3 server."""
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name=REGION, aws_access_key_id="testing",
                        aws_secret_access_key="testing")


@pytest.fixture(scope="session")
def seeded_bucket(s3: Any, env: Dict[str, str]) -> str:
    """A bucket with one week of orders and the model (and report) the train CLI made from it."""
    name = new_bucket(s3)
    s3.put_object(Bucket=name, Key=SEED_WEEK_KEY, Body=week_csv(generate_orders(1000, seed=4)))
    result = run_cli(["-m", "pipeline.train_model", name, "0.9", "0.8"], env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert len(keys_under(s3, name, "models/")) == 1
    return name


@pytest.fixture
def bucket_with_model(s3: Any, seeded_bucket: str) -> str:
    """This test's own bucket: the seeded week, its model and its report."""
    return copy_bucket(s3, seeded_bucket, ("datasets/", "models/", "reports/"))


@pytest.fixture
def bucket_with_week(s3: Any, seeded_bucket: str) -> str:
    """This test's own bucket with the seeded week and no model."""
    return copy_bucket(s3, seeded_bucket, ("datasets/",))


@pytest.fixture
def cli(env: Dict[str, str]) -> Callable[..., "subprocess.CompletedProcess[str]"]:
    """`cli(*args, env=None)`: run `python -m pipeline.<stage> ARGS` against the local S3 server."""
    def _run(*args: str, env_: Optional[Dict[str, str]] = None) -> "subprocess.CompletedProcess[str]":
        return run_cli(list(args), env_ or env)
    return _run


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """`start(bucket, env, *options)`: a serve stage, stopped after the test."""
    started: List[Service] = []

    def _start(bucket: str, env_: Dict[str, str], *options: str) -> Service:
        service = start_service(bucket, env_, tmp_path, *options)
        started.append(service)
        return service

    yield _start
    for service in started:
        service.stop()


def _serving(s3: Any, seeded_bucket: str, env: Dict[str, str], *options: str) -> Iterator[Service]:
    folder = Path(tempfile.mkdtemp(prefix="contract-serve-"))
    service = start_service(copy_bucket(s3, seeded_bucket, ("datasets/", "models/", "reports/")), env, folder,
                            *options)
    assert service.wait_ready_or_exit(START_TIMEOUT) == "ready", service.log()[-3000:]
    yield service
    service.stop()


@pytest.fixture(scope="module")
def service(s3: Any, seeded_bucket: str, env: Dict[str, str]) -> Iterator[Service]:
    """The service on the deployment's server stack (`--server-stack auto`), serving the model."""
    yield from _serving(s3, seeded_bucket, env, "--server-stack", "auto")


@pytest.fixture(scope="module")
def pure_python_service(s3: Any, seeded_bucket: str, env: Dict[str, str]) -> Iterator[Service]:
    """The service on the pure-Python fallback stack (`--server-stack pure-python`)."""
    yield from _serving(s3, seeded_bucket, env, "--server-stack", "pure-python")


# --- a misbehaving S3 -----------------------------------------------------------------------

class SlowS3(socketserver.ThreadingTCPServer):
    """An HTTP/1.1 proxy on loopback in front of the local S3 server that can misbehave.

    Its own here rather than shared with tests/storage/, because this folder runs against
    older commits too. Set before a stage starts:
      trickle_seconds: send every answer one byte at a time, this many seconds apart (each
        byte inside the S3 client's per-read timeout, so only an overall deadline ends it);
      hold_later_parts: hold each multipart UploadPart after the first this many seconds;
      gather_puts: (path part, N): hold each PUT whose path holds the part until N of them
        arrived (or 30 s passed), then forward them all: N clients that each checked before
        writing all checked before any of them wrote.
    It records what it did (`seen`) and how many bytes of each answer reached the client
    (`delivered`, by path).
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: Tuple[str, int]) -> None:
        super().__init__((LOOPBACK, 0), _SlowS3Handler)
        self.upstream = upstream
        self.trickle_seconds = 0.0
        self.hold_later_parts = 0.0
        self.parts_forwarded = 0
        self.gather_puts: Tuple[str, int] = ("", 0)
        self.gathered = threading.Semaphore(0)
        self.arrived = 0
        self.seen: List[Tuple[str, str, str]] = []
        self.delivered: Dict[str, int] = {}
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.server_address[1]}"

    def note(self, method: str, path: str, what: str) -> None:
        with self.lock:
            self.seen.append((method, path, what))


class _SlowS3Handler(socketserver.BaseRequestHandler):
    server: SlowS3

    def handle(self) -> None:
        client = self.request
        client.settimeout(120)
        reader = client.makefile("rb")
        try:
            while not self.server.stopping.is_set():
                head = _read_head(reader)
                if head is None:
                    return
                method, path, headers, raw_head = head
                if headers.get("expect", "").lower() == "100-continue":
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                length = int(headers.get("content-length", "0"))
                body = reader.read(length) if length else b""
                is_part = method == "PUT" and "partNumber=" in path and "uploadId=" in path
                if is_part and self.server.hold_later_parts and self.server.parts_forwarded >= 1:
                    self.server.note(method, path, "held")
                    if self.server.stopping.wait(self.server.hold_later_parts):
                        return
                if method == "PUT" and self.server.gather_puts[0] and self.server.gather_puts[0] in path:
                    self._gather(method, path)
                response = self._forward(raw_head, body)
                if self.server.trickle_seconds:
                    self.server.note(method, path, "trickled")
                    for byte in response:
                        client.sendall(bytes([byte]))
                        if self.server.stopping.wait(self.server.trickle_seconds):
                            return
                    continue
                self.server.note(method, path, "forwarded")
                for start in range(0, len(response), 65536):
                    client.sendall(response[start:start + 65536])
                    with self.server.lock:
                        self.server.delivered[path] = self.server.delivered.get(path, 0) + \
                            len(response[start:start + 65536])
                if is_part:
                    with self.server.lock:
                        self.server.parts_forwarded += 1
        except OSError:
            return
        finally:
            reader.close()

    def _gather(self, method: str, path: str) -> None:
        with self.server.lock:
            self.server.arrived += 1
            if self.server.arrived == self.server.gather_puts[1]:
                for _ in range(self.server.gather_puts[1]):
                    self.server.gathered.release()
        self.server.note(method, path, "gathered")
        self.server.gathered.acquire(timeout=30)

    def _forward(self, raw_head: bytes, body: bytes) -> bytes:
        lines = raw_head.split(b"\r\n")
        kept = [line for line in lines[1:] if line and not line.lower().startswith((b"expect:", b"connection:"))]
        request = b"\r\n".join([lines[0], *kept, b"Connection: close", b"", b""]) + body
        with socket.create_connection(self.server.upstream, timeout=120) as upstream:
            upstream.sendall(request)
            chunks = []
            while True:
                chunk = upstream.recv(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        head, _, rest = b"".join(chunks).partition(b"\r\n\r\n")
        # Keep the client's connection open for its next request: drop the upstream's "close".
        head_lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
        return b"\r\n".join(head_lines) + b"\r\n\r\n" + rest


def _read_head(reader: Any) -> Optional[Tuple[str, str, Dict[str, str], bytes]]:
    lines = []
    while True:
        line = reader.readline(65536)
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            break
        lines.append(line.rstrip(b"\r\n"))
    method, path, _ = lines[0].decode("latin-1").split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, path, headers, b"\r\n".join(lines) + b"\r\n\r\n"


def _running_proxy(s3_endpoint: str) -> SlowS3:
    host, port = s3_endpoint.rsplit("//", 1)[1].split(":")
    server = SlowS3((host, int(port)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _close_proxy(server: SlowS3) -> None:
    server.stopping.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def slow_s3(s3_endpoint: str) -> Iterator[SlowS3]:
    """A proxy in front of the local S3 server, for this test; it forwards until told otherwise."""
    server = _running_proxy(s3_endpoint)
    yield server
    _close_proxy(server)


# --- item 11: both stages on an S3 that trickles, started with the session -----------------

TRICKLE_TESTS = ("test_item_11_serve", "test_item_11_train")
# The production deadlines (100 s, 440 s) are checked against bodywork.yaml's limits by
# tests/test_settings.py; here a short one shows that the stages keep it.
TRICKLE_DEADLINE_SECONDS = 20


class TrickledStages(NamedTuple):
    """The serve and train stages, each started on its own bucket through a trickling S3 at
    `started` (time.monotonic), with their logs; a test waits for each and reads its log."""

    serve: "subprocess.Popen[bytes]"
    serve_port: int
    serve_log: Path
    train: "subprocess.Popen[bytes]"
    train_log: Path
    train_bucket: str
    started: float


@pytest.fixture(scope="session")
def trickled_stages(s3: Any, s3_endpoint: str, seeded_bucket: str) -> Iterator[TrickledStages]:
    """Each stage is given an S3 deadline of TRICKLE_DEADLINE_SECONDS through the deadline's
    override variable, which a commit without the deadline ignores (there the stages run on
    past any wait). Starting both early lets the other tests run meanwhile."""
    proxy = _running_proxy(s3_endpoint)
    proxy.trickle_seconds = 5.0
    folder = Path(tempfile.mkdtemp(prefix="contract-trickle-"))
    env = {**stage_environment(proxy.endpoint), "S3_DEADLINE_SECONDS": str(TRICKLE_DEADLINE_SECONDS)}
    serve_bucket = copy_bucket(s3, seeded_bucket, ("datasets/", "models/", "reports/"))
    train_bucket = copy_bucket(s3, seeded_bucket, ("datasets/", "models/", "reports/"))
    s3.put_object(Bucket=train_bucket, Key=LATER_WEEK_KEY, Body=week_csv(generate_orders(1000, seed=5)))
    started = time.monotonic()
    service = start_service(serve_bucket, env, folder)
    train_log = folder / "train.log"
    with open(train_log, "wb") as log:
        train = subprocess.Popen([sys.executable, "-m", "pipeline.train_model", train_bucket, "0.9", "0.8"],
                                 env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    yield TrickledStages(service.process, service.port, service.log_path, train, train_log, train_bucket, started)
    for process in (service.process, train):
        if process.poll() is None:
            process.kill()
            process.wait()
    _close_proxy(proxy)


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    """Wait for the trickled stages last of all the session's tests, the others keeping their
    order: the stages run meanwhile, so waiting out their deadlines costs the suite little."""
    items.sort(key=lambda item: item.name.startswith(TRICKLE_TESTS))


@pytest.fixture(scope="session", autouse=True)
def _start_trickled_stages_early(request: pytest.FixtureRequest) -> None:
    if any(item.name.startswith(TRICKLE_TESTS) for item in request.session.items):
        request.getfixturevalue("trickled_stages")
