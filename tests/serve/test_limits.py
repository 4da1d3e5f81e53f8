"""The request limits middleware: 413 before parsing, counted for streamed bodies; 408 for slow bodies."""
import asyncio
import json
from typing import Any, Dict, Iterator, List

from fastapi.testclient import TestClient

from pipeline.artefact.model import Model
from pipeline.serve.limits import RequestLimits
from pipeline.settings import API, SERVE

Message = Dict[str, Any]


def largest_valid_batch(model: Model) -> bytes:
    """1,000 items of the longest product code and a 24-character number, pretty-printed."""
    code = max(model.product_codes, key=len)
    item = {"product_code": code, "orders_placed": 1.2345678901234567e-05}
    return json.dumps([item] * SERVE.max_batch_size, indent=4).encode()


def test_the_largest_valid_batch_is_well_under_the_limit_and_answered(client: TestClient, served_model: Model) -> None:
    body = largest_valid_batch(served_model)

    response = client.post(API.predict_batch_path, content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 200
    assert len(body) * 5 < SERVE.max_body_bytes


def test_a_body_declared_over_the_limit_is_refused_413_without_reading_it(client: TestClient) -> None:
    response = client.post(API.predict_batch_path, content=b"[" + b" " * SERVE.max_body_bytes + b"]",
                           headers={"Content-Type": "application/json"})

    assert response.status_code == 413
    assert response.json() == {"detail": f"the request body is larger than {SERVE.max_body_bytes} bytes, the limit"}


def test_a_streamed_body_without_a_length_is_counted_and_refused_413(client: TestClient) -> None:
    # TestClient sends a generator without Content-Length; the real service's test
    # (test_serve_model_hostile.py) checks the answer comes before the body is all sent.
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b" " * 65536

    response = client.post(API.predict_batch_path, content=chunks(), headers={"Content-Type": "application/json"})

    assert response.request.headers.get("content-length") is None
    assert response.status_code == 413


def test_a_body_that_does_not_arrive_in_time_is_answered_408() -> None:
    answered: List[Message] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass

    async def receive() -> Message:
        await asyncio.sleep(10)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        answered.append(message)

    scope = {"type": "http", "headers": [(b"content-length", b"10")]}
    asyncio.run(RequestLimits(app, body_timeout_seconds=0.2)(scope, receive, send))

    assert answered[0]["status"] == 408
    assert (b"connection", b"close") in answered[0]["headers"]
    assert json.loads(answered[1]["body"]) == {"detail": "the request body did not arrive within 0.2 s"}


def test_a_request_within_the_limits_passes_untouched() -> None:
    received: List[bytes] = []
    messages = [{"type": "http.request", "body": b"ab", "more_body": True},
                {"type": "http.request", "body": b"c", "more_body": False}]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            received.append(message["body"])
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def receive() -> Message:
        return messages.pop(0)

    sent: List[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(RequestLimits(app, max_body_bytes=3)({"type": "http", "headers": []}, receive, send))

    assert received == [b"ab", b"c"] and sent[0]["status"] == 200
