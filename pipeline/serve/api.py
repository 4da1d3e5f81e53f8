"""The service's HTTP API: request and response schemas, routes, and the 422 handler.

    POST /api/v0.1/time_to_dispatch        {"product_code": "SKU001", "orders_placed": 112}
                                           -> {"est_hours_to_dispatch": 5.321, "model_version": "...",
                                               "upper_hours_to_dispatch": 6.9, "extrapolated": false}
    POST /api/v0.1/time_to_dispatch/batch  [request, ...] (1 to 1,000) -> [prediction, ...]
    GET  /api/v0.1/model                   the model's lineage
    GET  /api/v0.1/model/report            the model's report (HTML), 404 for a model without one
    GET  /health                           liveness
    GET  /ready                            readiness: a model is loaded and warmed up
    GET  /metrics                          Prometheus metrics (metrics.py), on by default
    GET  /docs, /openapi.json              the API's documentation, every asset served here (api_docs.py)

`create_app` is the app factory: production (`start_up.serve`) and the tests build the app
the same way, with a loaded model passed in. docs/api.md documents the contract. Bodies over
the size limit (413) or too slow to arrive (408) are stopped by `limits.RequestLimits` before
anything parses them. A valid single prediction is answered on the hot path (`hot_path.py`),
without FastAPI's per-request machinery, with the bytes the stock route would send.
"""
import itertools
import json
import math
from typing import Annotated, Any, Dict, List, Optional, Sequence, Union, cast

from fastapi import Body, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from pipeline.artefact.model import Model
from pipeline.serve.api_docs import add_docs
from pipeline.serve.hot_path import HotPathMiddleware, HotPathRoute
from pipeline.serve.limits import RequestLimits
from pipeline.serve.metrics import ServiceMetrics, instrument
from pipeline.serve.request_schema import PredictionRequest, build_request_model
from pipeline.settings import API, MESSAGES, SERVE

# The report is HTML from the bucket: whatever it holds, the browser runs no script from it and
# loads nothing but its embedded plots (docs/reliability.md, "Threat model").
REPORT_HEADERS = {"Content-Security-Policy": API.report_content_security_policy, "X-Content-Type-Options": "nosniff"}


class ErrorMessage(BaseModel):
    """An error that is not about one field: unparseable, too large or too slow a body."""

    detail: str


# The answers every POST route may give besides 200 and 422, as the OpenAPI schema lists them.
BODY_ERROR_RESPONSES: Dict[Union[int, str], Dict[str, Any]] = {
    400: {"model": ErrorMessage, "description": "The body could not be read as JSON."},
    408: {"model": ErrorMessage, "description": f"The body did not arrive within {SERVE.body_timeout_seconds:g} s."},
    413: {"model": ErrorMessage, "description": f"The body is larger than {SERVE.max_body_bytes} bytes."},
}


class Prediction(BaseModel):
    """One estimate, and exactly which model made it."""

    est_hours_to_dispatch: float = Field(description="Estimated hours until the order is dispatched.")
    model_version: str = Field(description="The model artefact that made the estimate, with its lineage.")
    upper_hours_to_dispatch: Optional[float] = Field(
        description="The order is dispatched within this many hours at the model's stated coverage (0.9 by "
        "default: 9 orders in 10, measured on held-out orders); never below the estimate. null for a model "
        "made before upper bounds existed.")
    extrapolated: bool = Field(
        description="True when orders_placed is outside the range the model was trained on for this product: "
        "the estimate is then the one at the nearest edge of that range, not extended beyond the data.")


def create_app(
    model: Model,
    report_html: Optional[bytes] = None,
    metrics: bool = True,
    access_log: bool = False,
    hot_path: bool = True,
) -> FastAPI:
    """The service's app, answering with `model`.

    Production and tests use this same factory with a real model injected.

    Args:
        model: a loaded model artefact (see `load_model`).
        report_html: the model's report page, or None if it has none.
        metrics: serve `GET /metrics` and count every request and prediction.
        access_log: log one line per request (route, status, duration).
        hot_path: answer valid single predictions on the hot path (`HotPathRoute` and
            `HotPathMiddleware`); without it every route is FastAPI's stock `APIRoute` and
            every request goes through FastAPI (same answers, more CPU per request).

    Returns:
        The FastAPI app.

    Raises:
        ValueError: if the model has no product codes.
    """
    version = str(model)
    lineage = jsonable_encoder(model.lineage())
    request_model = build_request_model(model.product_codes)
    app = FastAPI(
        title="time-to-dispatch",
        version=API.version,
        description=f"Estimated hours until an order is dispatched. Serving model {version}.",
        # The service exports no OpenTelemetry (its metrics are `metrics.py`'s); left on, FastAPI's
        # native telemetry looks up the global providers on every request (docs/benchmarks.md).
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # The stock documentation pages load their scripts from a public CDN: `add_docs` serves
        # Swagger UI with the service's own copies, and ReDoc stays off (api_docs.py says why).
        docs_url=None,
        redoc_url=None,
    )
    app.router.route_class = HotPathRoute if hot_path else APIRoute
    add_docs(app)
    app.add_exception_handler(RequestValidationError, validation_error_response)
    service_metrics = ServiceMetrics(model) if metrics else None
    observe_prediction = service_metrics.observe_prediction if service_metrics else _ignore_prediction
    observe_predictions = service_metrics.observe_predictions if service_metrics else _ignore_predictions

    # `async def` without any awaiting: the tree walk takes microseconds, so running it on the
    # event loop is far cheaper than a hop to the thread pool that FastAPI uses for `def`.
    @app.post(API.predict_path, response_model=Prediction, summary="Estimate the hours to dispatch",
              responses=BODY_ERROR_RESPONSES)
    async def time_to_dispatch(request: request_model) -> Prediction:  # type: ignore[valid-type]
        body = cast(PredictionRequest, request)
        estimate = model.estimate_one(body.product_code, body.orders_placed)
        observe_prediction(body.product_code, body.orders_placed, estimate.extrapolated)
        return Prediction(est_hours_to_dispatch=estimate.est_hours_to_dispatch, model_version=version,
                          upper_hours_to_dispatch=estimate.upper_hours_to_dispatch,
                          extrapolated=estimate.extrapolated)

    # One vectorised call of the estimator for the whole batch; a batch of 1,000 takes well
    # under a millisecond, so it too stays on the event loop.
    @app.post(API.predict_batch_path, response_model=List[Prediction], summary="Estimate for many requests",
              responses=BODY_ERROR_RESPONSES)
    async def time_to_dispatch_batch(
        requests: Annotated[  # type: ignore[valid-type]
            List[request_model], Body(min_length=1, max_length=SERVE.max_batch_size)
        ],
    ) -> List[Prediction]:
        bodies = cast(List[PredictionRequest], requests)
        codes = [body.product_code for body in bodies]
        orders = [body.orders_placed for body in bodies]
        estimates = model.estimate(codes, orders)
        observe_predictions(codes, orders, estimates.extrapolated)
        upper = estimates.upper_hours_to_dispatch
        uppers = [None] * len(bodies) if upper is None else upper.tolist()
        return [Prediction(est_hours_to_dispatch=e, model_version=version, upper_hours_to_dispatch=u, extrapolated=x)
                for e, u, x in zip(estimates.est_hours_to_dispatch.tolist(), uppers,
                                   estimates.extrapolated.tolist())]

    @app.get(API.model_path, summary="The model's lineage")
    async def model_lineage() -> Dict[str, Any]:
        return cast(Dict[str, Any], lineage)

    @app.get(API.model_report_path, summary="The model's report (HTML)", response_class=HTMLResponse,
             responses={404: {"description": "The model has no report (it was made before reports existed)"}})
    async def model_report() -> Any:
        if report_html is None:
            where = f"named {model.report_key}, not found" if model.report_key else "made before reports existed"
            return JSONResponse(status_code=404, content={
                "detail": f"model {model.artefact_id} has no report ({where})"})
        return HTMLResponse(report_html, headers=REPORT_HEADERS)

    @app.get(API.health_path, summary="Liveness")
    async def health() -> Dict[str, str]:
        return {"status": "ok"}

    # The factory only ever gets a loaded model, and `main` warms it up before the port opens,
    # so whenever this can answer, the service is ready.
    @app.get(API.ready_path, summary="Readiness: a model is loaded and warmed up")
    async def ready() -> Dict[str, str]:
        return {"status": "ready", "model_version": version}

    # Middleware, innermost first: the hot path inside the limits (which see its body as they
    # see any), both inside the metrics (which see every answer, the 413s and 408s included).
    if hot_path:
        app.add_middleware(HotPathMiddleware, routes=app.router.routes)
    app.add_middleware(RequestLimits)
    instrument(app, service_metrics, access_log)
    return app


def _ignore_prediction(product_code: str, orders_placed: float, extrapolated: bool) -> None:
    pass


def _ignore_predictions(product_codes: Sequence[str], orders_placed: Sequence[float], extrapolated: Any) -> None:
    pass


async def validation_error_response(request: Request, error: Exception) -> JSONResponse:
    """FastAPI's standard 422 body, safe to render whatever the request held, and bounded.

    - At most SERVE.max_errors_reported errors are listed, then one of type `too_many_errors`
      that counts the rest (an object with too many fields is refused whole before this, as one
      `too_many_fields` error; an unknown product code names at most MESSAGES.max_codes_named
      codes, `expected_codes`).

    - NaN and Infinity (Python's JSON parser accepts the literals) are echoed as the strings
      `"NaN"`, `"Infinity"` and `"-Infinity"`; JSON cannot carry them as numbers.
    - An echoed `input` whose JSON is longer than MESSAGES.quote_prefix_chars characters becomes a
      string: its first MESSAGES.quote_prefix_chars characters, `...`, and its length. A 100 MB value
      is never sent back.
    - Lone surrogates (`"\ud800"`, valid in JSON text, not in UTF-8) in any string of the
      body, field names in `loc` included, are echoed escaped (`\ud800`), since the body could
      not be encoded otherwise.
    - A body sent with a content type other than JSON is echoed as text; bytes that are not
      UTF-8 (e.g. a UTF-16 body) are echoed escaped (`\xff`), where FastAPI's encoder would fail.
    """
    errors = cast(RequestValidationError, error).errors()
    detail = []
    for item in errors[:SERVE.max_errors_reported]:
        item = dict(item)
        if isinstance(item.get("input"), bytes):
            item["input"] = item["input"].decode("utf-8", "backslashreplace")
        if "input" in item:
            item["input"] = _echoed(item["input"])
        if "loc" in item:  # a field name that is not in the schema is the client's text too
            item["loc"] = [_short_input(part) if isinstance(part, str) else part for part in item["loc"]]
        detail.append(_json_safe(jsonable_encoder(item)))
    if len(errors) > SERVE.max_errors_reported:
        detail.append({
            "type": "too_many_errors", "loc": ["body"],
            "msg": f"{len(errors) - SERVE.max_errors_reported} more error(s) not listed; the first "
                   f"{SERVE.max_errors_reported} are",
            "input": None,
        })
    return JSONResponse(status_code=422, content={"detail": detail})


def _echoed(value: Any) -> Any:
    # An object or array of more items than the echo keeps characters is cut on the JSON text of
    # its first items, and counted in items: encoding all of them would take longer than the
    # whole request (90,000 fields: 150 ms).
    limit = MESSAGES.quote_prefix_chars
    if isinstance(value, dict) and len(value) > limit:
        head = json.dumps(dict(itertools.islice(value.items(), limit)), ensure_ascii=False, default=str)
        return _json_safe(f"{head[:limit]}... ({len(value)} fields)")
    if isinstance(value, list) and len(value) > limit:
        head = json.dumps(value[:limit], ensure_ascii=False, default=str)
        return _json_safe(f"{head[:limit]}... ({len(value)} items)")
    return _short_input(_json_safe(jsonable_encoder(value)))


def _short_input(value: Any) -> Any:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if len(text) <= MESSAGES.quote_prefix_chars:
        return value
    return f"{text[:MESSAGES.quote_prefix_chars]}... ({len(text)} characters)"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_json_safe(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value
