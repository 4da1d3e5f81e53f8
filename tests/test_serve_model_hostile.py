"""Hostile clients against the real service process: oversized and slow bodies, surrogates,
deep nesting, every 4xx of the contract, resident memory afterwards, and a shutdown with a
client stalled mid-body; oversized and endless request heads, random methods and an HTTP/2
upgrade on both server stacks."""
import http.client
import json
import random
import socket
import string
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Sequence, Tuple

import pytest

from pipeline.settings import API, LOCAL, MB, SERVE
from tests.helpers import LOG_LINE, Service, StartService, parse_metrics, stop_service, wait_until_listening

pytestmark = pytest.mark.e2e


@pytest.fixture
def service(s3_env: Dict[str, str], bucket_with_model: str, start: StartService) -> Iterator[Service]:
    running = start(["-m", "pipeline.serve_model", bucket_with_model], s3_env)
    wait_until_listening(running)
    yield running
    stop_service(running)


# The deployment's stack (uvloop and httptools) and the pure-Python fallback (asyncio and h11):
# the hostile clients of the connection itself (its head, its method, an upgrade) meet the
# HTTP parser, which differs between the two.
SERVER_STACKS = ["auto", "pure-python"]


@pytest.fixture(params=SERVER_STACKS)
def service_on_stack(
    request: pytest.FixtureRequest, s3_env: Dict[str, str], bucket_with_model: str, start: StartService
) -> Iterator[Service]:
    running = start(["-m", "pipeline.serve_model", bucket_with_model, "--server-stack", request.param], s3_env)
    wait_until_listening(running)
    yield running
    stop_service(running)


def raw_request(port: int, head: bytes, body_chunks: Sequence[bytes] = (), timeout: float = 30) -> Tuple[int, bytes]:
    """Send a request as raw bytes (stopping early if the server answers); its status and body."""
    with socket.create_connection((LOCAL.loopback_host, port), timeout=timeout) as sock:
        sock.sendall(head)
        for chunk in body_chunks:
            try:
                sock.sendall(chunk)
            except OSError:  # the server answered and closed while we were still sending
                break
        response = b""
        while b"\r\n\r\n" not in response or len(response.partition(b"\r\n\r\n")[2]) < _length(response):
            data = sock.recv(65536)
            if not data:
                break
            response += data
    head_part, _, body = response.partition(b"\r\n\r\n")
    return int(head_part.split(b" ", 2)[1]), body


def _length(response: bytes) -> int:
    for line in response.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def post_head(path: str, length: int = -1) -> bytes:
    size = f"Content-Length: {length}\r\n" if length >= 0 else "Transfer-Encoding: chunked\r\n"
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{size}\r\n").encode()


def post_text(port: int, path: str, text: str) -> Tuple[int, Any]:
    body = text.encode("utf-8", "surrogatepass")
    status, answer = raw_request(port, post_head(path, len(body)), [body])
    return status, json.loads(answer)


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_100_mb_body_is_refused_413_before_it_is_sent(service: Service) -> None:
    status, body = raw_request(service.port, post_head(API.predict_batch_path, 100 * 2**20), [])

    assert status == 413
    assert json.loads(body)["detail"].startswith("the request body is larger than")


def test_a_chunked_body_over_the_limit_is_refused_413_while_it_streams(service: Service) -> None:
    chunk = b"10000\r\n" + b" " * 65536 + b"\r\n"

    chunks = [chunk] * (2 * SERVE.max_body_bytes // 65536)
    status, _ = raw_request(service.port, post_head(API.predict_batch_path), chunks)

    assert status == 413


def test_a_body_that_stalls_is_answered_408_within_the_body_timeout(service: Service) -> None:
    started = time.monotonic()

    status, body = raw_request(service.port, post_head(API.predict_path, 1000), [b'{"product_code": '])

    assert status == 408
    assert SERVE.body_timeout_seconds <= time.monotonic() - started < SERVE.body_timeout_seconds + 5


# The contract's every 4xx for a body, sent to one service (starting one per case would take
# most of this file's time).
INVALID_REQUESTS = [
    ("surrogate", API.predict_path, '{"product_code": "\\ud800", "orders_placed": 1}', 422),
    ("missing-field", API.predict_path, '{"product_code": "SKU001"}', 422),
    ("unknown-code", API.predict_path, '{"product_code": "SKU999", "orders_placed": 1}', 422),
    ("negative", API.predict_path, '{"product_code": "SKU001", "orders_placed": -1}', 422),
    ("nan", API.predict_path, '{"product_code": "SKU001", "orders_placed": NaN}', 422),
    ("infinity", API.predict_path, '{"product_code": "SKU001", "orders_placed": Infinity}', 422),
    ("extra-field", API.predict_path, '{"product_code": "SKU001", "orders_placed": 1, "extra": 1}', 422),
    ("unparseable", API.predict_path, '{"product_code": ', 422),
    ("empty-batch", API.predict_batch_path, "[]", 422),
    ("oversized-batch", API.predict_batch_path,
     json.dumps([{"product_code": "SKU001", "orders_placed": 1}] * (SERVE.max_batch_size + 1)), 422),
    ("deep-nesting", API.predict_batch_path, "[" * 50_000 + "]" * 50_000, 400),
]


def test_every_invalid_request_is_a_4xx_in_the_documented_shape(service: Service) -> None:
    answers = {name: post_text(service.port, path, text) for name, path, text, _ in INVALID_REQUESTS}

    assert {name: answers[name][0] for name, *_ in INVALID_REQUESTS} == {
        name: status for name, _, _, status in INVALID_REQUESTS
    }
    for name, (status, body) in answers.items():
        if status == 422:
            assert all({"type", "loc", "msg"} <= set(error) for error in body["detail"]), name
        else:
            assert isinstance(body["detail"], str), name


def test_memory_stays_within_the_pods_request_after_a_hostile_sequence(service: Service) -> None:
    big = json.dumps({"product_code": "X" * (SERVE.max_body_bytes - 100), "orders_placed": 1})
    for _ in range(20):
        assert post_text(service.port, API.predict_path, big)[0] == 422
        assert raw_request(service.port, post_head(API.predict_batch_path, 100 * 2**20), [])[0] == 413
        assert post_text(service.port, API.predict_batch_path, "[" * 50_000 + "]" * 50_000)[0] == 400

    assert resident_bytes(service.process.pid) < SERVE.memory_request_mb * MB


def test_sigterm_with_a_client_stalled_mid_body_ends_cleanly_in_the_log_format(service: Service) -> None:
    with socket.create_connection((LOCAL.loopback_host, service.port)) as stalled:
        stalled.sendall(post_head(API.predict_path, 1000) + b'{"product_code": ')
        time.sleep(0.5)
        started = time.monotonic()

        code = stop_service(service)

    assert code == 0
    # Ended by the body timeout, not by the graceful shutdown giving up (which cancels tasks).
    assert time.monotonic() - started < SERVE.graceful_shutdown_seconds
    lines = service.log().splitlines()
    assert lines and all(LOG_LINE.match(line) for line in lines), "\n".join(lines)


# --- the connection: its head, its method, an upgrade, on both server stacks ---------------

def send_head_and_read(port: int, pieces: Sequence[bytes], timeout: float = 20) -> Tuple[int, bytes, bool]:
    """Send `pieces` (stopping if the server closes), then read; the status, the body, and
    whether the server closed the connection after answering."""
    with socket.create_connection((LOCAL.loopback_host, port), timeout=timeout) as sock:
        for piece in pieces:
            try:
                sock.sendall(piece)
            except OSError:
                break
        response = bytearray()
        closed = False
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                closed = True
                break
            if not data:
                closed = True
                break
            response += data
            head, _, body = response.partition(b"\r\n\r\n")
            if _ and len(body) >= _length(response):
                # Answered: a server that closes does so at once, but a loaded machine may
                # take a while to run it. A body without a Content-Length (h11's own 400) is
                # delimited by the close, and may still be arriving: read it to the end.
                closed = _closed_within(sock, 10, response)
                break
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), bytes(body), closed


def _closed_within(sock: socket.socket, seconds: float, response: bytearray) -> bool:
    """Whether the server closes the connection within `seconds`, reading (into `response`)
    whatever it still sends before it does."""
    sock.settimeout(seconds)
    try:
        while data := sock.recv(65536):
            response += data
        return True
    except socket.timeout:
        return False
    except OSError:  # reset: closed with our unread bytes still in its buffer
        return True


def test_a_head_over_the_head_limit_is_refused_and_the_connection_closed(service_on_stack: Service) -> None:
    header = b"X-Padding: " + b"a" * (16 * SERVE.max_header_bytes)
    pieces = [f"GET {API.health_path} HTTP/1.1\r\nHost: test\r\n".encode()]
    pieces += [header[i:i + 4096] for i in range(0, len(header), 4096)] + [b"\r\n\r\n"]

    status, _, closed = send_head_and_read(service_on_stack.port, pieces)

    assert (status in (400, 431), closed) == (True, True), status


def test_heads_that_never_end_do_not_shut_out_other_clients_and_are_closed(service_on_stack: Service) -> None:
    partial = f"GET {API.health_path} HTTP/1.1\r\nHost: test\r\nX-Slow: 1\r\n".encode()
    slow = [socket.create_connection((LOCAL.loopback_host, service_on_stack.port))
            for _ in range(SERVE.max_concurrent_requests + 6)]
    try:
        for sock in slow:
            sock.sendall(partial)
        time.sleep(0.5)
        health = [send_head_and_read(service_on_stack.port, [f"GET {API.health_path} HTTP/1.1\r\nHost: test\r\n"
                                                             "Connection: close\r\n\r\n".encode()])[0]
                  for _ in range(5)]
        slow[0].settimeout(SERVE.head_timeout_seconds + 5)
        started = time.monotonic()
        try:
            ended: Any = slow[0].recv(65536)
        except socket.timeout:
            ended = None
        waited = time.monotonic() - started
    finally:
        for sock in slow:
            sock.close()

    assert health == [200] * 5
    assert ended == b"" or ended.startswith(b"HTTP/1.1 408 ")
    assert waited < SERVE.head_timeout_seconds + 1
    warnings = [line for line in service_on_stack.log().splitlines() if " - WARNING - " in line]
    assert len(warnings) <= 2, warnings


def test_random_methods_do_not_grow_the_metric_series(service_on_stack: Service) -> None:
    connection = http.client.HTTPConnection(LOCAL.loopback_host, service_on_stack.port, timeout=10)
    rng = random.Random(8)
    for _ in range(300):
        method = "".join(rng.choices(string.ascii_uppercase, k=12))
        try:
            connection.request(method, API.health_path)
            connection.getresponse().read()
        except (http.client.HTTPException, OSError):  # httptools refuses unknown methods itself
            connection.close()
            connection = http.client.HTTPConnection(LOCAL.loopback_host, service_on_stack.port, timeout=10)
    connection.request("GET", API.metrics_path)
    scrape = parse_metrics(connection.getresponse().read())
    connection.close()

    series = scrape.series("time_to_dispatch_http_requests_total")
    methods = {labels["method"] for labels, _ in series}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "other"}
    assert len(series) < 20


def test_an_http2_upgrade_with_a_body_is_answered_or_refused_clearly_never_a_422(service_on_stack: Service) -> None:
    body = json.dumps({"product_code": "SKU001", "orders_placed": 112}).encode()
    head = (f"POST {API.predict_path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n").encode()

    status, answer, _ = send_head_and_read(service_on_stack.port, [head + body])

    if status == 200:
        assert json.loads(answer)["est_hours_to_dispatch"] > 0
    else:
        assert (status, "upgrade" in json.loads(answer)["detail"]) == (400, True), answer


def test_invalid_requests_and_unsupported_upgrades_do_not_log_a_line_each(service_on_stack: Service) -> None:
    garbage = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not HTTP at all\r\n\r\n"
    upgrade = (f"GET {API.health_path} HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\n"
               "Upgrade: websocket\r\n\r\n").encode()
    for _ in range(40):
        for request in (garbage, upgrade):
            send_head_and_read(service_on_stack.port, [request])

    lines = service_on_stack.log().splitlines()
    assert not [line for line in lines if not LOG_LINE.match(line)]
    warned = [line for line in lines if "Invalid HTTP request" in line or "upgrade" in line.lower()]
    assert 1 <= len(warned) <= 2, warned
    assert "requests uvicorn warned of" in warned[0]


@pytest.mark.parametrize("path", [API.predict_path, API.predict_batch_path])
def test_an_amplifying_body_gets_a_short_422_from_the_real_service_on_each_stack(
    service_on_stack: Service, path: str
) -> None:
    # The probe's body: 979 KB of unknown fields, whose 422 once listed 90,002 errors (9 MB).
    text = "{" + ",".join(f'"k{i}":0' for i in range(90_000)) + "}"

    status, answer = raw_request(service_on_stack.port, post_head(path, len(text)), [text.encode()])

    assert status == 422
    assert len(answer) < 5_000
    assert len(json.loads(answer)["detail"]) <= SERVE.max_errors_reported + 1
