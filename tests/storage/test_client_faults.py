"""S3 faults under both stages' real CLIs: an HTTP fault proxy in front of the local S3 server.

Each case points a stage's AWS_ENDPOINT_URL at the proxy and asserts its exit code, its one
ERROR line (or none), its elapsed time within the stage's limit from bodywork.yaml, and the
bucket's models (unchanged after a failure; one new, verified model after a ridden-out fault).

Production's timeouts (S3_* of `pipeline/storage/client.py`) are used for the serve stage's never-answer case, the
one that shows the budget holds; the other slow cases scale the timeouts down through the
S3_* environment variables so that the suite stays within minutes, and
`test_the_s3_budget_fits_each_stage_and_rides_out_a_70_s_stall` checks production's arithmetic.
"""
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
import yaml

from pipeline.model_registry.live_model import list_models
from pipeline.settings import ENVIRONMENT, LOCAL, S3
from pipeline.storage.signed_artefacts import get_model
from tests.helpers import StartService, error_lines, free_port, run_cli, stop_service, wait_until_listening

pytestmark = pytest.mark.e2e

LIMITS = yaml.safe_load((LOCAL.repo_root / "bodywork.yaml").read_text())["stages"]
TRAIN_LIMIT = float(LIMITS["train_model"]["batch"]["max_completion_time_seconds"])
SERVE_LIMIT = float(LIMITS["serve_model"]["service"]["max_startup_time_seconds"])
# The S3 deadline the trickle cases give both stages: short, to keep them within seconds.
TRICKLE_DEADLINE = 6.0
# Scaled-down timeouts for the slow cases: the same arithmetic, ten times faster.
FAST_TIMEOUTS = {
    ENVIRONMENT.s3_connect_timeout: "1", ENVIRONMENT.s3_read_timeout: "2", ENVIRONMENT.s3_max_attempts: "4",
}
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>fault</RequestId></Error>"
)


class FaultProxy(socketserver.ThreadingTCPServer):
    """A small HTTP/1.1 proxy on 127.0.0.1 that forwards to `upstream`, or misbehaves.

    Faults, set as attributes before or while a stage runs:
      slow_down: answer this many requests 503 SlowDown, then forward again;
      reset_puts: reset this many PUT connections halfway through their body;
      stall_for: from the first request on, hold every request for this many seconds after
        that first one arrived, then forward (a stall: S3 silent, then back);
      never_answer: read every request and never answer it;
      trickle_seconds: send every answer one byte at a time, this many seconds apart (each
        byte well inside the read timeout, so no per-read timeout ever fires);
      hold_later_parts: hold every multipart UploadPart after the first this many seconds;
      slow_down_after_parts: (N, M): once N UploadParts were forwarded, answer the next M
        requests 503 SlowDown.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: Tuple[str, int]) -> None:
        super().__init__((LOCAL.loopback_host, 0), _ProxyHandler)
        self.upstream = upstream
        self.slow_down = 0
        self.reset_puts = 0
        self.stall_for = 0.0
        self.stall_until = 0.0
        self.never_answer = False
        self.trickle_seconds = 0.0
        self.hold_later_parts = 0.0
        self.slow_down_after_parts = (0, 0)
        self.parts_forwarded = 0
        self.stopping = threading.Event()
        self.seen: List[Tuple[str, str, str]] = []  # (method, path, what the proxy did)
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://{LOCAL.loopback_host}:{self.server_address[1]}"

    def take(self, fault: str) -> bool:
        """Use up one of a counted fault, if any is left."""
        with self.lock:
            left = getattr(self, fault)
            if left > 0:
                setattr(self, fault, left - 1)
                return True
            return False


class _ProxyHandler(socketserver.BaseRequestHandler):
    server: FaultProxy

    def handle(self) -> None:
        client = self.request
        client.settimeout(60)
        reader = client.makefile("rb")
        try:
            while not self.server.stopping.is_set():
                head = _read_head(reader)
                if head is None:
                    return
                method, path, headers, raw_head = head
                length = int(headers.get("content-length", "0"))
                if headers.get("expect", "").lower() == "100-continue":
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                if method == "PUT" and self.server.take("reset_puts"):
                    reader.read(length // 2)
                    self._log(method, path, "reset")
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                body = reader.read(length) if length else b""
                if self.server.never_answer:
                    self._log(method, path, "never answered")
                    self.server.stopping.wait()
                    return
                if self.server.take("slow_down"):
                    self._log(method, path, "503 SlowDown")
                    client.sendall(_response(503, "Slow Down", SLOW_DOWN, b"application/xml"))
                    continue
                is_part = method == "PUT" and "partNumber=" in path and "uploadId=" in path
                if is_part and self.server.hold_later_parts and self.server.parts_forwarded >= 1:
                    self._log(method, path, "held")
                    if self.server.stopping.wait(self.server.hold_later_parts):
                        return
                with self.server.lock:
                    if self.server.stall_for:
                        self.server.stall_until = time.monotonic() + self.server.stall_for
                        self.server.stall_for = 0.0
                wait = self.server.stall_until - time.monotonic()
                if wait > 0:
                    self._log(method, path, f"stalled {wait:.1f}s")
                    if self.server.stopping.wait(wait):
                        return
                response = self._forward(raw_head, body)
                if self.server.trickle_seconds:
                    self._log(method, path, "trickled")
                    for byte in response:
                        client.sendall(bytes([byte]))
                        if self.server.stopping.wait(self.server.trickle_seconds):
                            return
                    continue
                client.sendall(response)
                self._log(method, path, "forwarded")
                if is_part:
                    with self.server.lock:
                        self.server.parts_forwarded += 1
                        after, count = self.server.slow_down_after_parts
                        if after and self.server.parts_forwarded == after:
                            self.server.slow_down = count
        except OSError:
            return
        finally:
            reader.close()

    def _forward(self, raw_head: bytes, body: bytes) -> bytes:
        lines = raw_head.split(b"\r\n")
        kept = [line for line in lines[1:] if line and not line.lower().startswith((b"expect:", b"connection:"))]
        request = b"\r\n".join([lines[0], *kept, b"Connection: close", b"", b""]) + body
        with socket.create_connection(self.server.upstream, timeout=60) as upstream:
            upstream.sendall(request)
            chunks = []
            while True:
                chunk = upstream.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        response = b"".join(chunks)
        # Keep the client's connection open for its next request: drop the upstream's "close".
        head, _, rest = response.partition(b"\r\n\r\n")
        head_lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
        return b"\r\n".join(head_lines) + b"\r\n\r\n" + rest

    def _log(self, method: str, path: str, what: str) -> None:
        with self.server.lock:
            self.server.seen.append((method, path, what))


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


def _response(status: int, reason: str, body: bytes, content_type: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status} {reason}\r\n".encode()
        + b"Content-Type: " + content_type + b"\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    host, port = s3_endpoint.rsplit("//", 1)[1].split(":")
    server = FaultProxy((host, int(port)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.stopping.set()
    server.shutdown()
    server.server_close()


def through(env: Dict[str, str], endpoint: str, **settings: str) -> Dict[str, str]:
    return {**env, ENVIRONMENT.aws_endpoint_url: endpoint, **settings}


def models_in(s3: Any, bucket: str) -> List[str]:
    return sorted(item.key for item in list_models(bucket, s3))


def train(env: Dict[str, str], bucket: str, timeout: float = TRAIN_LIMIT + 30) -> Tuple[Any, float]:
    started = time.monotonic()
    result = run_cli(["-m", "pipeline.train_model", bucket, "0.9", "0.95"], env, timeout=timeout)
    return result, time.monotonic() - started


def serve_until_exit(start: StartService, env: Dict[str, str], bucket: str, limit: float) -> Tuple[Any, float]:
    started = time.monotonic()
    service = start(["-m", "pipeline.serve_model", bucket], env)
    service.process.wait(timeout=limit + 30)
    return service, time.monotonic() - started


# --- the budget --------------------------------------------------------------------------------

def test_the_s3_budget_fits_each_stage_and_rides_out_a_70_s_stall() -> None:
    worst = S3.worst_case_call_seconds()

    assert worst < SERVE_LIMIT - 20 and worst < TRAIN_LIMIT - 60
    # The attempts span at least 70 s: some attempt is still waiting when a 70 s stall ends.
    assert S3.max_attempts * S3.read_timeout_seconds >= 70
    # 503 SlowDown three times is retried: a fourth attempt is allowed.
    assert S3.max_attempts >= 4


# --- the train stage ------------------------------------------------------------------------

def test_train_with_s3_refusing_connections_fails_with_one_error_line_and_persists_nothing(
    s3_env: Dict[str, str], s3: Any, bucket_with_model: str
) -> None:
    before = models_in(s3, bucket_with_model)

    result, elapsed = train(through(s3_env, f"http://{LOCAL.loopback_host}:{free_port()}"), bucket_with_model)

    assert result.returncode == 1
    [line] = error_lines(result.stdout)
    assert f"train_model failed: s3://{bucket_with_model}/datasets/: cannot list it" in line
    assert "Could not connect to the endpoint URL" in line
    assert elapsed < TRAIN_LIMIT
    assert models_in(s3, bucket_with_model) == before


def test_train_rides_out_three_503_slow_downs_and_a_reset_put(
    s3_env: Dict[str, str], s3: Any, bucket_with_model: str, proxy: FaultProxy
) -> None:
    before = models_in(s3, bucket_with_model)
    proxy.slow_down, proxy.reset_puts = 3, 1

    result, elapsed = train(through(s3_env, proxy.endpoint), bucket_with_model)

    assert result.returncode == 0, result.stdout
    assert error_lines(result.stdout) == []
    assert [what for _, _, what in proxy.seen].count("503 SlowDown") == 3
    assert ("PUT", "reset") in [(method, what) for method, _, what in proxy.seen]
    after = models_in(s3, bucket_with_model)
    [new] = sorted(set(after) - set(before))
    assert get_model(bucket_with_model, new, s3).artefact_key == new
    assert elapsed < TRAIN_LIMIT


def test_train_rides_out_a_stall_shorter_than_its_attempts(
    s3_env: Dict[str, str], s3: Any, bucket_with_model: str, proxy: FaultProxy
) -> None:
    # Scaled: 4 attempts of 2 s ride out a 5 s stall as production's 4 x 20 s ride out 70 s.
    before = models_in(s3, bucket_with_model)
    proxy.stall_for = 5

    result, elapsed = train(through(s3_env, proxy.endpoint, **FAST_TIMEOUTS), bucket_with_model)

    assert result.returncode == 0, result.stdout
    assert any(what.startswith("stalled") for _, _, what in proxy.seen)
    assert len(models_in(s3, bucket_with_model)) == len(before) + 1
    assert elapsed < TRAIN_LIMIT


def test_train_with_s3_never_answering_fails_with_one_error_line_within_the_budget(
    s3_env: Dict[str, str], s3: Any, bucket_with_model: str, proxy: FaultProxy
) -> None:
    before = models_in(s3, bucket_with_model)
    proxy.never_answer = True

    result, elapsed = train(through(s3_env, proxy.endpoint, **FAST_TIMEOUTS), bucket_with_model)

    assert result.returncode == 1
    [line] = error_lines(result.stdout)
    assert f"train_model failed: s3://{bucket_with_model}/datasets/: cannot list it: Read timeout" in line
    assert len(proxy.seen) == 4  # every attempt, and no more
    assert elapsed < TRAIN_LIMIT
    assert models_in(s3, bucket_with_model) == before


def test_train_with_s3_trickling_fails_with_one_error_line_naming_its_s3_deadline(
    s3_env: Dict[str, str], s3: Any, bucket_with_model: str, proxy: FaultProxy
) -> None:
    # A byte every 0.5 s never trips a 2 s read timeout: only the stage's deadline ends it.
    before = models_in(s3, bucket_with_model)
    proxy.trickle_seconds = 0.5
    env = through(s3_env, proxy.endpoint, **FAST_TIMEOUTS, **{ENVIRONMENT.s3_deadline: str(TRICKLE_DEADLINE)})

    result, elapsed = train(env, bucket_with_model, timeout=TRICKLE_DEADLINE + 30)

    assert result.returncode == 1
    [line] = error_lines(result.stdout)
    assert f"train_model failed: the train stage's S3 deadline of {TRICKLE_DEADLINE:g} s passed while " in line
    assert elapsed < TRICKLE_DEADLINE + 20
    assert models_in(s3, bucket_with_model) == before


# --- the serve stage ------------------------------------------------------------------------

def test_serve_with_s3_refusing_connections_exits_1_with_one_error_line(
    s3_env: Dict[str, str], bucket_with_model: str, start: StartService
) -> None:
    service, elapsed = serve_until_exit(
        start, through(s3_env, f"http://{LOCAL.loopback_host}:{free_port()}"), bucket_with_model, SERVE_LIMIT
    )

    assert service.process.returncode == 1
    [line] = error_lines(service.log())
    assert f"serve_model failed: s3://{bucket_with_model}/models/: cannot list it" in line
    assert elapsed < SERVE_LIMIT


def test_serve_rides_out_three_503_slow_downs(
    s3_env: Dict[str, str], bucket_with_model: str, start: StartService, proxy: FaultProxy
) -> None:
    proxy.slow_down = 3

    service = start(["-m", "pipeline.serve_model", bucket_with_model],
                    through(s3_env, proxy.endpoint, **FAST_TIMEOUTS))
    wait_until_listening(service, timeout=SERVE_LIMIT)

    assert [what for _, _, what in proxy.seen].count("503 SlowDown") == 3
    assert stop_service(service) == 0
    assert error_lines(service.log()) == []


def test_serve_with_s3_never_answering_exits_1_within_its_start_up_limit_with_production_timeouts(
    s3_env: Dict[str, str], bucket_with_model: str, start: StartService, proxy: FaultProxy
) -> None:
    # The one case run with production's timeouts (about 85 s): the budget is real, not scaled.
    proxy.never_answer = True
    env = {name: value for name, value in through(s3_env, proxy.endpoint).items() if not name.startswith("S3_")}

    service, elapsed = serve_until_exit(start, env, bucket_with_model, SERVE_LIMIT)

    assert service.process.returncode == 1
    [line] = error_lines(service.log())
    assert f"serve_model failed: s3://{bucket_with_model}/models/: cannot list it: Read timeout" in line
    assert len(proxy.seen) == S3.max_attempts
    assert S3.max_attempts * S3.read_timeout_seconds <= elapsed < SERVE_LIMIT


def test_serve_with_s3_trickling_exits_1_naming_its_s3_deadline_and_never_opens_the_port(
    s3_env: Dict[str, str], bucket_with_model: str, start: StartService, proxy: FaultProxy
) -> None:
    proxy.trickle_seconds = 0.5
    env = through(s3_env, proxy.endpoint, **FAST_TIMEOUTS, **{ENVIRONMENT.s3_deadline: str(TRICKLE_DEADLINE)})

    service, elapsed = serve_until_exit(start, env, bucket_with_model, TRICKLE_DEADLINE)

    assert service.process.returncode == 1
    [line] = error_lines(service.log())
    assert f"serve_model failed: the serve stage's S3 deadline of {TRICKLE_DEADLINE:g} s passed while " in line
    assert "serving model" not in service.log()
    assert elapsed < TRICKLE_DEADLINE + 20


# --- batch scoring's multipart uploads ----------------------------------------------------

# Enough rows for an output of more than two 8 MiB parts.
BATCH_ROWS = 450_000


def put_large_orders(s3: Any, bucket: str, key: str) -> None:
    lines = ["order_id,product_code,orders_placed"]
    lines += [f"O-{i:07d},SKU00{i % 5 + 1},{i % 300}" for i in range(BATCH_ROWS)]
    s3.put_object(Bucket=bucket, Key=key, Body=("\n".join(lines) + "\n").encode())


def uploads_left(s3: Any, bucket: str) -> List[str]:
    return [upload["Key"] for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def test_batch_scoring_stopped_by_sigterm_after_a_part_aborts_its_uploads_and_exits_143(
    s3_env: Dict[str, str], s3: Any, bucket_with_model: str, proxy: FaultProxy
) -> None:
    put_large_orders(s3, bucket_with_model, "in/orders.csv")
    proxy.hold_later_parts = 3.0
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.score_batch", bucket_with_model, "in/orders.csv", "out/orders.csv"],
        env=through(s3_env, proxy.endpoint, **FAST_TIMEOUTS), cwd=LOCAL.repo_root, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(what == "held" for _, _, what in proxy.seen):  # one part in, the next on its way
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()

    assert process.returncode == 143, output
    [line] = error_lines(output)
    assert "score_batch stopped by SIGTERM before it finished: the uploads were aborted" in line
    assert uploads_left(s3, bucket_with_model) == []
    assert [item["Key"] for item in s3.list_objects_v2(Bucket=bucket_with_model, Prefix="out/").get("Contents", [])] \
        == []


def test_batch_scoring_retries_the_abort_through_503s_and_leaves_no_parts(
    s3_env: Dict[str, str], s3: Any, bucket_with_model: str, proxy: FaultProxy
) -> None:
    # Twenty 503s after two parts: more than a part's and both aborts' four attempts each.
    put_large_orders(s3, bucket_with_model, "in/orders.csv")
    proxy.slow_down_after_parts = (2, 20)

    result = run_cli(["-m", "pipeline.score_batch", bucket_with_model, "in/orders.csv", "out/orders.csv"],
                     through(s3_env, proxy.endpoint, **FAST_TIMEOUTS), timeout=120)

    assert result.returncode == 1, result.stdout
    [line] = error_lines(result.stdout)
    assert "score_batch failed: " in line and "SlowDown" in line
    assert uploads_left(s3, bucket_with_model) == []
    assert [what for _, _, what in proxy.seen].count("503 SlowDown") == 20
