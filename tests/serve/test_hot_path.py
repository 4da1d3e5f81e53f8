"""The hot path (`HotPathRoute` and `HotPathMiddleware`): the same answer as FastAPI's stock
route for every body, byte for byte, with valid single predictions answered without it.

Each app is called as an ASGI server calls it, so that the raw status, headers and body bytes
can be compared; the model is the one the real train stage produced for the session (conftest).
"""
import asyncio
import json
import math
from typing import Any, Callable, Coroutine, Dict, List, Optional, Tuple

import pytest
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.artefact.model import Model
from pipeline.serve.api import (
    Prediction, PredictionRequest, build_request_model, create_app,
    validation_error_response,
)
from pipeline.serve.hot_path import HotPathMiddleware, HotPathRoute
from pipeline.settings import API, ARTEFACT, LOCAL, SERVE
from tests.helpers import made_before_the_served_parts, parse_metrics

Answer = Tuple[int, List[Tuple[bytes, bytes]], bytes]
MOST_ORDERS = ARTEFACT.max_accepted_orders_placed

# Enough to meet every kind of body below many times over, in a few seconds.
PROPERTY_EXAMPLES = 300


def asgi_post(app: Any, body: bytes, content_type: Optional[bytes] = b"application/json", chunks: int = 1,
              path: str = API.predict_path, method: str = "POST") -> Answer:
    """POST the body to `path` on the ASGI app as a server would, in `chunks` messages:
    the status, the raw headers and the body of the answer."""
    size = max(1, -(-len(body) // chunks))
    parts = [body[i:i + size] for i in range(0, len(body), size)] or [b""]
    messages = [{"type": "http.request", "body": part, "more_body": i < len(parts) - 1} for i, part in enumerate(parts)]
    headers = [(b"host", b"testserver"), (b"content-length", str(len(body)).encode())]
    if content_type is not None:
        headers.append((b"content-type", content_type))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": headers,
             "client": (LOCAL.loopback_host, 50000), "server": (LOCAL.loopback_host, 8000)}
    sent: List[Dict[str, Any]] = []

    async def receive() -> Dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)  # a client that waits for its answer
        raise AssertionError("unreachable")

    async def send(message: Dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], list(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def valid_bodies(model: Model) -> List[bytes]:
    return [json.dumps({"product_code": code, "orders_placed": orders}).encode()
            for code in model.product_codes for orders in (0, 1, 112, 137.5, 0.25, ARTEFACT.max_accepted_orders_placed)]


INVALID_BODIES = [
    b'{"product_code": "SKU999", "orders_placed": 112}',
    b'{"product_code": "SKU001", "orders_placed": -1}',
    b'{"product_code": "SKU001", "orders_placed": "112"}',
    b'{"product_code": "SKU001", "orders_placed": true}',
    b'{"product_code": "SKU001", "orders_placed": NaN}',
    b'{"product_code": "SKU001", "orders_placed": 1e400}',
    b'{"product_code": "SKU001", "orders_placed": 112, "rush": true}',
    b'{"product_code": "SKU001"}',
    b'{"product_code": "\\ud800", "orders_placed": 112}',
    b'{"product_code": "SKU001", "orders_placed": 112',
    b'[{"product_code": "SKU001", "orders_placed": 112}]',
    b"",
]


class StockCalls(APIRoute):
    """The stock route, recording each request its handler answers."""

    calls: List[bytes] = []

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        stock = super().get_route_handler()

        async def handler(request: Request) -> Response:
            StockCalls.calls.append(await request.body())
            return await stock(request)

        return handler


class RecordedHotPathRoute(HotPathRoute, StockCalls):
    """A hot-path route whose stock handler records what reaches it."""


@pytest.fixture
def stock_calls() -> List[bytes]:
    StockCalls.calls = []
    return StockCalls.calls


# The request model of a model trained on these codes.
Request3 = build_request_model(["SKU001", "SKU002", "SKU003"])


async def tenth_of_the_orders(request: Request3) -> Prediction:  # type: ignore[valid-type]
    return Prediction(est_hours_to_dispatch=request.orders_placed / 10, model_version="v",
                      upper_hours_to_dispatch=request.orders_placed / 5, extrapolated=request.orders_placed > 300)


def recorded_app() -> FastAPI:
    """An app whose single-prediction route is on the hot path, recording what reaches its stock handler."""
    app = FastAPI()
    app.router.route_class = RecordedHotPathRoute
    app.add_exception_handler(RequestValidationError, validation_error_response)
    app.post(API.predict_path, response_model=Prediction)(tenth_of_the_orders)
    app.add_middleware(HotPathMiddleware, routes=app.router.routes)
    return app


# --- which routes are on the hot path -------------------------------------------------------

def test_only_the_single_prediction_route_is_on_the_hot_path(trained_model: Model) -> None:
    app = create_app(trained_model)

    hot = [route.path for route in app.router.routes if getattr(route, "on_hot_path", False)]

    assert hot == [API.predict_path]
    assert all(isinstance(route, HotPathRoute) for route in app.router.routes if isinstance(route, APIRoute))


def test_without_the_hot_path_every_route_is_the_stock_route_and_no_middleware_answers(trained_model: Model) -> None:
    app = create_app(trained_model, hot_path=False)

    assert not any(isinstance(route, HotPathRoute) for route in app.router.routes)
    assert HotPathMiddleware not in [middleware.cls for middleware in app.user_middleware]


def test_a_route_whose_endpoint_does_not_take_one_body_model_is_not_on_the_hot_path() -> None:
    async def two_arguments(request: PredictionRequest, rush: bool = False) -> Prediction:
        raise AssertionError("not called")

    async def no_response_model(request: PredictionRequest) -> Dict[str, float]:
        raise AssertionError("not called")

    def not_async(request: PredictionRequest) -> Prediction:
        raise AssertionError("not called")

    assert HotPathRoute("/", tenth_of_the_orders, methods=["POST"], response_model=Prediction).on_hot_path
    assert not HotPathRoute("/", two_arguments, methods=["POST"], response_model=Prediction).on_hot_path
    assert not HotPathRoute("/", no_response_model, methods=["POST"]).on_hot_path
    assert not HotPathRoute("/", not_async, methods=["POST"], response_model=Prediction).on_hot_path
    assert not HotPathRoute("/", tenth_of_the_orders, methods=["POST"], response_model=Prediction,
                            status_code=201).on_hot_path


# --- what the hot path answers ----------------------------------------------------------------

def test_valid_requests_get_the_stock_routes_exact_status_headers_and_bytes(trained_model: Model) -> None:
    hot, stock = create_app(trained_model), create_app(trained_model, hot_path=False)

    for body in valid_bodies(trained_model):
        answer = asgi_post(hot, body)
        assert answer == asgi_post(stock, body), body
        assert answer[0] == 200


def test_a_model_without_the_served_parts_gets_the_stock_routes_exact_bytes_too(trained_model: Model) -> None:
    old = made_before_the_served_parts(trained_model)
    hot, stock = create_app(old), create_app(old, hot_path=False)

    answers = [asgi_post(hot, body) for body in valid_bodies(old)]

    assert answers == [asgi_post(stock, body) for body in valid_bodies(old)]
    predictions = [json.loads(content) for _, _, content in answers]
    assert {p["upper_hours_to_dispatch"] for p in predictions} == {None}
    assert {p["extrapolated"] for p in predictions} == {False, True}


def test_valid_requests_are_answered_without_the_stock_handler(stock_calls: List[bytes]) -> None:
    status, _, content = asgi_post(recorded_app(), b'{"product_code": "SKU001", "orders_placed": 15}')

    assert (status, json.loads(content)) == (200, {"est_hours_to_dispatch": 1.5, "model_version": "v",
                                                   "upper_hours_to_dispatch": 3.0, "extrapolated": False})
    assert stock_calls == []


def test_a_body_over_the_hot_paths_size_goes_to_the_stock_handler_and_is_answered_alike(
    stock_calls: List[bytes]
) -> None:
    small = b'{"product_code": "SKU001", "orders_placed": 15}'
    padded = small[:-1] + b" " * (SERVE.hot_path_max_body_bytes - len(small) + 1) + b"}"

    status, _, content = asgi_post(recorded_app(), padded)

    assert stock_calls == [padded]
    assert (status, content) == asgi_post(recorded_app(), small)[::2]


@pytest.mark.parametrize("body", INVALID_BODIES)
def test_an_invalid_body_goes_to_the_stock_handler_whole(stock_calls: List[bytes], body: bytes) -> None:
    status, _, _ = asgi_post(recorded_app(), body, chunks=3)

    assert stock_calls == [body]
    assert status in (400, 422)


@pytest.mark.parametrize("content_type", [b"application/json; charset=utf-8", b"text/plain", None])
def test_another_content_type_goes_to_the_stock_handler(
    stock_calls: List[bytes], content_type: Optional[bytes]
) -> None:
    body = b'{"product_code": "SKU001", "orders_placed": 15}'

    asgi_post(recorded_app(), body, content_type)

    assert stock_calls == [body]


@pytest.mark.parametrize("method, path", [("GET", API.predict_path), ("PUT", API.predict_path), ("POST", "/elsewhere")])
def test_other_methods_and_paths_go_to_the_app(stock_calls: List[bytes], method: str, path: str) -> None:
    status, _, _ = asgi_post(recorded_app(), b'{"product_code": "SKU001", "orders_placed": 15}', path=path,
                             method=method)

    assert status == (405 if path == API.predict_path else 404)
    assert stock_calls == []


@pytest.mark.parametrize("body", INVALID_BODIES)
def test_invalid_bodies_get_the_same_answer_on_the_hot_path_as_on_the_stock_route(
    trained_model: Model, body: bytes
) -> None:
    answer = asgi_post(create_app(trained_model), body)

    assert answer == asgi_post(create_app(trained_model, hot_path=False), body)
    assert answer[0] in (400, 422)


@pytest.mark.parametrize("content_type", [b"application/json; charset=utf-8", b"APPLICATION/JSON", b"text/plain", None])
def test_other_content_types_get_the_same_answer_on_the_hot_path_as_on_the_stock_route(
    trained_model: Model, content_type: Optional[bytes]
) -> None:
    body = b'{"product_code": "SKU001", "orders_placed": 112}'

    assert (asgi_post(create_app(trained_model), body, content_type)
            == asgi_post(create_app(trained_model, hot_path=False), body, content_type))


def test_the_hot_path_reads_a_body_sent_in_several_parts(trained_model: Model) -> None:
    body = b'{"product_code": "SKU002", "orders_placed": 140}'

    in_parts = asgi_post(create_app(trained_model), body, chunks=4)

    assert in_parts == asgi_post(create_app(trained_model, hot_path=False), body)


# --- around the hot path: request limits and metrics ------------------------------------------

def test_a_body_over_the_limit_is_refused_413_before_the_hot_path_reads_it(trained_model: Model) -> None:
    body = b'{"product_code": "SKU001", "orders_placed": 112' + b" " * SERVE.max_body_bytes + b"}"

    status, _, content = asgi_post(create_app(trained_model), body, chunks=20)

    assert status == 413
    assert json.loads(content) == {"detail": f"the request body is larger than {SERVE.max_body_bytes} bytes, the limit"}


def test_hot_path_requests_are_counted_under_the_routes_template(trained_model: Model) -> None:
    client = TestClient(create_app(trained_model))
    for orders in (10, 20, 30):
        client.post(API.predict_path, content=json.dumps({"product_code": "SKU003", "orders_placed": orders}),
                    headers={"Content-Type": "application/json"})

    scrape = parse_metrics(client.get(API.metrics_path).text)
    total = "time_to_dispatch_http_requests_total"
    assert scrape.value(total, route=API.predict_path, method="POST", status="200") == 3
    assert scrape.value("time_to_dispatch_predictions_total", product_code="SKU003") == 3


# --- the property: every generated body, the same answer ---------------------------------------

JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
    st.integers(min_value=10 ** 18, max_value=10 ** 400),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=10), inner, max_size=3)),
    max_leaves=8,
)
BOUNDARY_ORDERS = [0, 0.0, -0.0, 1, 112, 137.5, MOST_ORDERS, int(MOST_ORDERS), -1, -1e-300, 5e-324,
                   math.nextafter(MOST_ORDERS, math.inf), 1e308, math.inf, -math.inf, math.nan, 2 ** 64]


def orders_values() -> st.SearchStrategy[Any]:
    in_range = st.one_of(st.integers(min_value=0, max_value=int(ARTEFACT.max_accepted_orders_placed)),
                         st.floats(min_value=0, max_value=ARTEFACT.max_accepted_orders_placed))
    return st.one_of(
        in_range, in_range, st.sampled_from(BOUNDARY_ORDERS),
        JSON_VALUES,  # wrong types, huge numbers, nested objects
    )


def product_codes(model: Model) -> st.SearchStrategy[Any]:
    known = list(model.product_codes)
    return st.one_of(
        st.sampled_from(known), st.sampled_from(known), st.sampled_from(known),
        st.sampled_from([code.lower() for code in known] + [f" {known[0]}", "SKU999", "", "\ud800"]),
        JSON_VALUES,
    )


@st.composite
def request_objects(draw: st.DrawFn, model: Model) -> Dict[str, Any]:
    """A request object: valid, or with a field missing, of the wrong type or value, or extra keys."""
    fields: Dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        fields["product_code"] = draw(product_codes(model))
    if draw(st.integers(0, 9)):
        fields["orders_placed"] = draw(orders_values())
    if not draw(st.integers(0, 4)):
        fields.update(draw(st.dictionaries(st.text(max_size=12), JSON_VALUES, min_size=1, max_size=2)))
    return fields


@st.composite
def bodies(draw: st.DrawFn, model: Model) -> bytes:
    """Request bodies as clients might send them, and as they should not."""
    kind = draw(st.sampled_from(["valid", "valid", "valid", "object", "object", "spelt", "duplicate", "other json",
                                 "mangled", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=80))
    if kind == "other json":
        return json.dumps(draw(JSON_VALUES)).encode()
    if kind == "valid":
        fields = {"product_code": draw(st.sampled_from(model.product_codes)),
                  "orders_placed": draw(st.one_of(st.integers(0, 400), st.floats(0, MOST_ORDERS)))}
        if draw(st.booleans()):
            fields = dict(reversed(fields.items()))
    else:
        fields = draw(request_objects(model))
    if kind == "duplicate":  # the same key twice: JSON parsers keep the last
        fields = {**fields, "product_code": draw(product_codes(model))}
        first = json.dumps({"product_code": draw(product_codes(model))})[1:-1]
        return ("{" + first + ", " + json.dumps(fields)[1:]).encode()
    text = json.dumps(fields, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 0, 2])),
                      separators=draw(st.sampled_from([None, (",", ":")])))
    if kind == "spelt":  # numbers as some clients spell them
        text = text.replace(".0,", ".000,").replace(".0}", "e0}")
    encoding = draw(st.sampled_from(["utf-8"] * 6 + ["utf-16", "utf-8-sig", "latin-1"]))
    body = text.encode(encoding, "surrogatepass" if encoding.startswith("utf") else "replace")
    if kind == "mangled":  # cut short, or a byte that is not UTF-8
        cut = draw(st.integers(0, len(body)))
        body = draw(st.sampled_from([body[:cut], body[:cut] + b"\xff" + body[cut:]]))
    return body


# Mostly the content type the shop's platform sends, the one the hot path answers.
CONTENT_TYPES = [b"application/json"] * 6 + [
    b"application/json; charset=utf-8", b"APPLICATION/JSON", b"application/merge-patch+json", b"text/plain", b"", None]


def test_the_hot_path_and_the_stock_route_answer_every_body_alike(trained_model: Model) -> None:
    hot, stock = create_app(trained_model), create_app(trained_model, hot_path=False)
    statuses: List[int] = []

    @settings(max_examples=PROPERTY_EXAMPLES, deadline=None)
    @given(body=bodies(trained_model), content_type=st.sampled_from(CONTENT_TYPES), chunks=st.integers(1, 3))
    def same_answer(body: bytes, content_type: Optional[bytes], chunks: int) -> None:
        answer = asgi_post(hot, body, content_type, chunks)
        assert answer == asgi_post(stock, body, content_type, chunks)
        statuses.append(answer[0])

    same_answer()

    # The bodies reach every kind of answer: estimates, FastAPI's 422s and its 400s.
    assert {200, 400, 422} <= set(statuses)
