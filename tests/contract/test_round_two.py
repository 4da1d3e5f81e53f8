"""The 15 defects of the second hardening round, each shown through the product's contracts
alone (/work/shared/PRODUCT.md): the CLIs, HTTP to the real service, plain boto3 against the
local S3 server, environment variables.

Each test asserts the behaviour the contract (or the issue) states, so it runs unchanged on
the code before the fixes (7ab96a0), where it fails for the defect's own reason, and on the
fixed code, where it passes (docs/reliability.md, "Round two: shown on 7ab96a0"). The probes
and their parameters are those of the unit and stage tests of each fix.
"""
import http.client
import json
import random
import signal
import socket
import string
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Set, Tuple

import pytest
import yaml

from tests.contract.conftest import (
    LATER_WEEK_KEY, LOOPBACK, REPO_ROOT, Service, SlowS3, TrickledStages, generate_orders, keys_under,
    port_accepts, stage_environment, week_csv,
)

pytestmark = pytest.mark.e2e

Cli = Callable[..., "subprocess.CompletedProcess[str]"]
Start = Callable[..., Service]

# The contract's paths (PRODUCT.md), written as the shop's platform and operators use them.
PREDICT = "/api/v0.1/time_to_dispatch"
REPORT = "/api/v0.1/model/report"
HEALTH = "/health"
METRICS = "/metrics"
# The stages' limits as bodywork.yaml gives them to Kubernetes.
STAGES = yaml.safe_load((REPO_ROOT / "bodywork.yaml").read_text())["stages"]
SERVE_START_LIMIT = float(STAGES["serve_model"]["service"]["max_startup_time_seconds"])
TRAIN_JOB_LIMIT = float(STAGES["train_model"]["batch"]["max_completion_time_seconds"])
# Item 11 gives each stage an S3 deadline of TRICKLE_DEADLINE_SECONDS (conftest.py) and waits
# this long, well inside both limits, for it to end.
TRICKLE_WAIT_SECONDS = 60.0
assert TRICKLE_WAIT_SECONDS < min(SERVE_START_LIMIT, TRAIN_JOB_LIMIT)
# The service's documented head timeout (docs/api.md): a head not ended in 10 s is closed.
HEAD_TIMEOUT = 10.0
# What "a short log line" means here: a line a log pipeline keeps whole.
SHORT_LINE = 5_000
HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "other"}


def error_lines(output: str) -> List[str]:
    """The ERROR lines of a stage's output, in the contract's log format."""
    return [line for line in output.splitlines() if " - ERROR - " in line]


def longest_line(output: str) -> int:
    return max(map(len, output.splitlines()), default=0)


def series(scrape: List[str]) -> Set[Tuple[str, str]]:
    """The series of a Prometheus text scrape: each metric's name and labels, a histogram's
    buckets, sum and count counted as one series."""
    found = set()
    for line in scrape:
        if line and not line.startswith("#"):
            name, _, labels = line.rsplit(" ", 1)[0].partition("{")
            for suffix in ("_bucket", "_sum", "_count"):
                name = name[:-len(suffix)] if name.endswith(suffix) else name
            found.add((name, ",".join(label for label in labels.rstrip("}").split(",")
                                      if not label.startswith("le="))))
    return found


def body_of(s3: Any, bucket: str, key: str) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def the_model_key(s3: Any, bucket: str) -> str:
    [key] = keys_under(s3, bucket, "models/")
    return key


def the_report_key(s3: Any, bucket: str) -> str:
    [key] = [key for key in keys_under(s3, bucket, "reports/") if key.endswith("/report.html")]
    return key


def persisted(s3: Any, bucket: str) -> Tuple[List[str], List[str]]:
    return keys_under(s3, bucket, "models/"), keys_under(s3, bucket, "reports/")


def exchange(port: int, pieces: Sequence[bytes], timeout: float = 20) -> Tuple[int, bytes, bool]:
    """Send `pieces` on one connection (stopping if the server closes it), read the answer:
    its status (0 if none), its body, and whether the server then closed the connection."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        for piece in pieces:
            try:
                sock.sendall(piece)
            except OSError:
                break
        response, closed = b"", False
        while True:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                closed = True
                break
            if not data:
                closed = True
                break
            response += data
            head, separator, body = response.partition(b"\r\n\r\n")
            length = [int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")]
            if separator and length and len(body) >= length[0]:
                sock.settimeout(10)
                try:
                    closed = sock.recv(1) == b""
                except socket.timeout:
                    closed = False
                except OSError:
                    closed = True
                break
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body, closed


def get(port: int, path: str) -> Tuple[int, Dict[str, str], bytes]:
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def serve_until_it_ends(start: Start, bucket: str, env: Dict[str, str], timeout: float = 60) -> Tuple[str, str]:
    """Start the serve stage; wait for it to exit or open its port. Its outcome and log."""
    service = start(bucket, env)
    outcome = service.wait_ready_or_exit(timeout)
    if outcome == "exited":
        assert service.process.returncode == 1, service.log()[-3000:]
    return outcome, service.log()


def drop_week(s3: Any, bucket: str, frame: Any) -> None:
    """Data engineering's newest week, later than every week in the bucket."""
    s3.put_object(Bucket=bucket, Key=LATER_WEEK_KEY, Body=week_csv(frame))


# --- item 1: a signed artefact replayed under another key -----------------------------------

def test_item_01_a_rejected_model_copied_to_a_newer_key_is_not_served(
    s3: Any, cli: Cli, env: Dict[str, str], bucket_with_model: str, start: Start
) -> None:
    rejected = the_model_key(s3, bucket_with_model)
    assert cli("-m", "pipeline.registry", bucket_with_model, "reject", rejected, "--reason", "late orders"
               ).returncode == 0
    replay = f"models/time_to_dispatch_{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%S.%f}Z_replay01.pkl"
    s3.copy_object(Bucket=bucket_with_model, Key=replay, MetadataDirective="COPY",
                   CopySource={"Bucket": bucket_with_model, "Key": rejected})

    outcome, log = serve_until_it_ends(start, bucket_with_model, env)

    assert outcome == "exited", f"the service {outcome} on the replay: " + (
        [line for line in log.splitlines() if "replay01" in line] or [log[-500:]])[0]
    [line] = error_lines(log)
    assert replay in line


# --- item 2: the report trusted unchecked, and batch output over it ---------------------------

def test_item_02_batch_output_over_the_live_models_report_is_refused_and_the_report_unchanged(
    s3: Any, cli: Cli, bucket_with_model: str
) -> None:
    report = the_report_key(s3, bucket_with_model)
    before = body_of(s3, bucket_with_model, report)
    s3.put_object(Bucket=bucket_with_model, Key="in/rep.csv",
                  Body=b"note,product_code,orders_placed\n<script>alert(1)</script>,SKU001,1\n")

    result = cli("-m", "pipeline.score_batch", bucket_with_model, "in/rep.csv", report)

    assert (result.returncode, body_of(s3, bucket_with_model, report) == before) == (1, True), result.stdout[-2000:]
    assert len(error_lines(result.stdout)) == 1


def test_item_02_the_report_page_carries_a_content_security_policy_that_runs_no_script(service: Service) -> None:
    status, headers, _ = get(service.port, REPORT)

    assert (status, "content-security-policy" in headers) == (200, True), sorted(headers)
    policy = {part.split()[0]: part.split()[1:] for part in headers["content-security-policy"].split(";")
              if part.strip()}
    assert policy["default-src"] == ["'none'"] and "script-src" not in policy
    assert headers["x-content-type-options"] == "nosniff"


# --- item 3: an oversized newest artefact read whole -------------------------------------------

def test_item_03_an_unsigned_40_mib_newest_model_is_refused_from_its_size_before_its_body_is_read(
    s3: Any, bucket_with_week: str, start: Start, slow_s3: SlowS3
) -> None:
    size = 40 * 2**20
    key = "models/time_to_dispatch_2026-10-01T12:00:00.000000Z_b1660001.pkl"
    s3.put_object(Bucket=bucket_with_week, Key=key, Body=b"\0" * size)

    outcome, log = serve_until_it_ends(start, bucket_with_week, stage_environment(slow_s3.endpoint))

    assert outcome == "exited"
    [line] = error_lines(log)
    read = sum(count for path, count in slow_s3.delivered.items() if "b1660001.pkl" in path)
    assert read < size, f"the serve stage read {read:,} bytes of the {size:,}-byte object; its ERROR line: {line}"
    assert f"{size:,}" in line or str(size) in line, line


# --- items 4, 5, 8, 9: the connection -------------------------------------------------------

def test_item_04_a_256_kib_header_is_answered_431_and_the_connection_closed(service: Service) -> None:
    header = b"X-Padding: " + b"a" * (256 * 1024)
    pieces = [f"GET {HEALTH} HTTP/1.1\r\nHost: test\r\n".encode()]
    pieces += [header[i:i + 4096] for i in range(0, len(header), 4096)] + [b"\r\n\r\n"]

    status, _, closed = exchange(service.port, pieces)

    assert (status in (400, 431), closed) == (True, True), status


def test_item_05_seventy_unfinished_heads_leave_health_answering_and_are_closed_after_the_head_timeout(
    service: Service
) -> None:
    partial = f"GET {HEALTH} HTTP/1.1\r\nHost: test\r\nX-Slow: 1\r\n".encode()
    slow = [socket.create_connection((LOOPBACK, service.port)) for _ in range(70)]
    try:
        for sock in slow:
            sock.sendall(partial)
        time.sleep(0.5)
        health = [exchange(service.port, [f"GET {HEALTH} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
                                          .encode()])[0] for _ in range(5)]
        slow[0].settimeout(HEAD_TIMEOUT + 10)
        try:
            ended: Any = slow[0].recv(65536)
        except socket.timeout:
            ended = None
    finally:
        for sock in slow:
            sock.close()

    assert health == [200] * 5
    assert ended == b"" or ended.startswith(b"HTTP/1.1 408 "), ended


def test_item_08_random_methods_on_the_pure_python_stack_do_not_grow_the_metric_series(
    pure_python_service: Service
) -> None:
    port = pure_python_service.port
    get(port, METRICS)  # the scrape's own series exist before the count
    before = get(port, METRICS)[2].decode().splitlines()
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    rng = random.Random(8)
    for _ in range(300):
        try:
            connection.request("".join(rng.choices(string.ascii_uppercase, k=12)), HEALTH)
            connection.getresponse().read()
        except (http.client.HTTPException, OSError):
            connection.close()
            connection = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    connection.close()
    after = get(port, METRICS)[2].decode().splitlines()

    methods = {line.split('method="', 1)[1].split('"', 1)[0] for line in after if 'method="' in line}
    grown = series(after) - series(before)
    assert len(grown) < 20, f"{len(grown)} new series in /metrics, e.g. {sorted(grown)[:2]}"
    assert methods <= HTTP_METHODS, sorted(methods - HTTP_METHODS)[:5]


def test_item_09_an_http2_upgrade_with_a_valid_body_is_answered_or_refused_clearly_never_a_422(
    service: Service
) -> None:
    body = json.dumps({"product_code": "SKU001", "orders_placed": 112}).encode()
    head = (f"POST {PREDICT} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n").encode()

    status, answer, _ = exchange(service.port, [head + body])

    assert status in (200, 400), (status, answer[:300])
    if status == 200:
        assert json.loads(answer)["est_hours_to_dispatch"] > 0
    else:
        assert "upgrade" in json.loads(answer)["detail"], answer


# --- item 6: a 422 amplified ----------------------------------------------------------------

def test_item_06_a_body_of_90000_unknown_fields_is_a_small_422(service: Service) -> None:
    text = "{" + ",".join(f'"k{i}":0' for i in range(90_000)) + "}"
    connection = http.client.HTTPConnection(LOOPBACK, service.port, timeout=120)
    connection.request("POST", PREDICT, body=text.encode(), headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    answer = response.read()
    connection.close()

    assert (response.status, len(answer) < 5_000) == (422, True), f"a {len(answer):,}-byte {response.status}"


# --- items 7, 10: weeks that must not train ---------------------------------------------------

def test_item_07_a_week_with_a_130000_character_product_code_is_refused_and_nothing_persisted(
    s3: Any, cli: Cli, bucket_with_model: str
) -> None:
    week = generate_orders(1000, seed=3)
    week.loc[week.index[:12], "product_code"] = "X" * 130_000
    drop_week(s3, bucket_with_model, week)
    before = persisted(s3, bucket_with_model)

    result = cli("-m", "pipeline.train_model", bucket_with_model, "0.9", "0.8")

    assert (result.returncode, persisted(s3, bucket_with_model) == before) == (1, True), result.stdout[-1000:]
    assert len(error_lines(result.stdout)) == 1


def test_item_10_a_week_with_a_row_at_150000_orders_is_refused_and_nothing_persisted(
    s3: Any, cli: Cli, bucket_with_model: str
) -> None:
    week = generate_orders(1000, seed=5)
    week.loc[week.index[7], "orders_placed"] = 150_000
    drop_week(s3, bucket_with_model, week)
    before = persisted(s3, bucket_with_model)

    result = cli("-m", "pipeline.train_model", bucket_with_model, "0.9", "0.8")

    assert (result.returncode, persisted(s3, bucket_with_model) == before) == (1, True), result.stdout[-1000:]
    [line] = error_lines(result.stdout)
    assert "150000" in line


# --- item 12: ERROR lines as long as what a file or an argument holds --------------------------

def test_item_12_train_with_60000_distinct_codes_logs_short_lines(s3: Any, cli: Cli, bucket_with_model: str) -> None:
    week = generate_orders(60_000, seed=4)
    week["product_code"] = [f"P{i:06d}" for i in range(len(week))]
    drop_week(s3, bucket_with_model, week)

    result = cli("-m", "pipeline.train_model", bucket_with_model, "0.9", "0.8")

    assert result.returncode == 1
    assert len(error_lines(result.stdout)) == 1
    assert longest_line(result.stdout) < SHORT_LINE, f"a line of {longest_line(result.stdout):,} characters"


def test_item_12_batch_scoring_a_header_with_a_130000_character_column_logs_short_lines(
    s3: Any, cli: Cli, bucket_with_model: str
) -> None:
    s3.put_object(Bucket=bucket_with_model, Key="in/orders.csv", Body=("c" * 130_000 + ",x\n1,2\n").encode())

    result = cli("-m", "pipeline.score_batch", bucket_with_model, "in/orders.csv", "out/orders.csv")

    assert result.returncode == 1
    assert len(error_lines(result.stdout)) == 1
    assert longest_line(result.stdout) < SHORT_LINE, f"a line of {longest_line(result.stdout):,} characters"


def test_item_12_registry_with_a_100_kb_reason_logs_short_lines(s3: Any, cli: Cli, bucket_with_model: str) -> None:
    model = the_model_key(s3, bucket_with_model)
    rejected = cli("-m", "pipeline.registry", bucket_with_model, "reject", model, "--reason", "r" * 100_000)
    again = cli("-m", "pipeline.registry", bucket_with_model, "reject", model, "--reason", "r" * 100_000)

    assert (rejected.returncode, again.returncode) == (0, 1)
    assert len(error_lines(again.stdout)) == 1
    output = rejected.stdout + again.stdout
    assert longest_line(output) < SHORT_LINE, f"a line of {longest_line(output):,} characters"


# --- item 13: rejects over the input ----------------------------------------------------------

def test_item_13_rejects_that_would_overwrite_the_input_are_refused_and_the_input_unchanged(
    s3: Any, cli: Cli, bucket_with_model: str
) -> None:
    rows = "order_id,product_code,orders_placed\nA-1,SKU001,10\nA-2,SKU002,20\nB-1,SKU9,n\n"
    s3.put_object(Bucket=bucket_with_model, Key="in/x.csv.rejects.csv", Body=rows.encode())

    result = cli("-m", "pipeline.score_batch", bucket_with_model, "in/x.csv.rejects.csv", "in/x.csv",
                 "--max-reject-fraction", "1")

    after = body_of(s3, bucket_with_model, "in/x.csv.rejects.csv").decode()
    assert (result.returncode, after == rows) == (1, True), f"exit {result.returncode}; the input now: {after!r}"
    assert len(error_lines(result.stdout)) == 1
    assert keys_under(s3, bucket_with_model, "in/") == ["in/x.csv.rejects.csv"]


# --- item 14: SIGTERM in a multipart upload ------------------------------------------------------

def test_item_14_sigterm_during_a_multipart_batch_upload_leaves_no_upload_and_exits_143(
    s3: Any, bucket_with_model: str, slow_s3: SlowS3
) -> None:
    lines = ["order_id,product_code,orders_placed"]
    lines += [f"O-{i:07d},SKU00{i % 5 + 1},{i % 300}" for i in range(450_000)]
    s3.put_object(Bucket=bucket_with_model, Key="in/orders.csv", Body=("\n".join(lines) + "\n").encode())
    slow_s3.hold_later_parts = 3.0
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.score_batch", bucket_with_model, "in/orders.csv", "out/orders.csv"],
        env=stage_environment(slow_s3.endpoint), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(what == "held" for _, _, what in slow_s3.seen):  # one part in, the next on its way
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()

    uploads = [upload["Key"] for upload in s3.list_multipart_uploads(Bucket=bucket_with_model).get("Uploads", [])]
    assert (process.returncode, uploads) == (143, []), output[-2000:]
    assert len(error_lines(output)) == 1
    assert keys_under(s3, bucket_with_model, "out/") == []


# --- item 15: concurrent registry changes ------------------------------------------------------

def test_item_15_eight_concurrent_rejects_record_one_change_and_the_others_exit_1(
    s3: Any, bucket_with_model: str, slow_s3: SlowS3
) -> None:
    # Eight operators at once: the S3 holds each record's write until all eight are on their
    # way, so every command has checked the model's history before any of them writes.
    slow_s3.gather_puts = ("/registry/", 8)
    model = the_model_key(s3, bucket_with_model)
    command = [sys.executable, "-m", "pipeline.registry", bucket_with_model, "reject", model, "--reason", "r"]
    processes = [subprocess.Popen(command, env=stage_environment(slow_s3.endpoint), cwd=REPO_ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(8)]
    outputs = [process.communicate(timeout=120)[0] for process in processes]

    records = keys_under(s3, bucket_with_model, "registry/")
    codes = sorted(process.returncode for process in processes)
    assert (len(records), codes) == (1, [0] + [1] * 7), records
    for process, output in zip(processes, outputs):
        assert len(error_lines(output)) == (process.returncode == 1)


# --- item 11: a slow S3 (last: both stages were started with the session and run meanwhile) ----

def _waited_log(process: "subprocess.Popen[bytes]", log_path: Path, started: float) -> str:
    """Wait until TRICKLE_WAIT_SECONDS after `started` for `process` to end; its log."""
    try:
        process.wait(timeout=max(started + TRICKLE_WAIT_SECONDS - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        pass
    return log_path.read_text(errors="replace")


def test_item_11_serve_on_a_trickling_s3_exits_1_within_its_start_up_limit_never_opening_its_port(
    trickled_stages: TrickledStages
) -> None:
    log = _waited_log(trickled_stages.serve, trickled_stages.serve_log, trickled_stages.started)

    assert trickled_stages.serve.poll() == 1, (
        f"still loading {TRICKLE_WAIT_SECONDS:g} s after it started, its last line: " + (log.splitlines() or [""])[-1])
    assert not port_accepts(trickled_stages.serve_port)
    assert len(error_lines(log)) == 1


def test_item_11_train_on_a_trickling_s3_exits_1_within_its_job_limit_persisting_nothing(
    s3: Any, trickled_stages: TrickledStages
) -> None:
    log = _waited_log(trickled_stages.train, trickled_stages.train_log, trickled_stages.started)

    assert trickled_stages.train.poll() == 1, (
        f"still running {TRICKLE_WAIT_SECONDS:g} s after it started, its last line: " + (log.splitlines() or [""])[-1])
    assert len(error_lines(log)) == 1
    assert len(keys_under(s3, trickled_stages.train_bucket, "models/")) == 1
