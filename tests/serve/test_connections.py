"""The connection limits' pieces that need no server: the refusal log and the refusals' bytes.
The limits themselves are tested on the real service, on both stacks, in
tests/test_serve_model_hostile.py."""
import json
import logging
from typing import List

import pytest

from pipeline.serve.connections import RefusalLog, protocol_class, raw_refusal


def test_refusals_are_logged_once_at_first_then_at_most_once_per_interval_with_counts(
        caplog: pytest.LogCaptureFixture) -> None:
    now: List[float] = [0.0]
    refusals = RefusalLog(interval_seconds=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        for second in range(120):
            now[0] = float(second)
            refusals.note("heads slower than the head timeout (408)")
            refusals.note("requests over the request limit (503)")

    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "connections refused: 1 heads slower than the head timeout (408)",
        "connections refused in the last 60 s: 60 heads slower than the head timeout (408); "
        "60 requests over the request limit (503)",
    ]


def test_a_refusal_without_a_request_is_a_complete_response_that_closes_the_connection() -> None:
    head, _, body = raw_refusal(408, "too slow").partition(b"\r\n\r\n")

    assert head.split(b"\r\n")[0] == b"HTTP/1.1 408 Request Timeout"
    assert b"connection: close" in head and f"content-length: {len(body)}".encode() in head
    assert json.loads(body) == {"detail": "too slow"}


@pytest.mark.parametrize("http, base", [("httptools", "HttpToolsProtocol"), ("h11", "H11Protocol")])
def test_each_stack_gets_uvicorns_own_protocol_with_the_limits(http: str, base: str) -> None:
    assert base in [klass.__name__ for klass in protocol_class(http).__mro__]
