"""Serve stage: the newest model behind a REST API, ready only when the model is.

Usage: python -m pipeline.serve_model S3_BUCKET [--host HOST] [--port PORT] [--access-log]

Bodywork runs it as `python serve_model.py S3_BUCKET` from `pipeline/` with the repository
root on PYTHONPATH. At start-up it loads the newest model artefact from `s3://S3_BUCKET/models/`
(checksum and contents verified by the storage module), refuses an artefact trained with
another scikit-learn version, warms the model up and checks its fast path against the
estimator, and only then opens the port: Kubernetes takes an open TCP port as "ready". Any
failure before that is one ERROR line and exit code 1, with the port never opened. SIGTERM
stops accepting connections, lets requests in flight finish, and exits 0.

API (see README, "The serve stage and its API", and /docs):

    POST /api/v0.1/time_to_dispatch        {"product_code": "SKU001", "orders_placed": 112}
                                           -> {"est_hours_to_dispatch": 5.321, "model_version": "..."}
    POST /api/v0.1/time_to_dispatch/batch  [request, ...] (1 to 1,000) -> [prediction, ...]
    GET  /api/v0.1/model                   the model's lineage
    GET  /health                           liveness
    GET  /ready                            readiness: a model is loaded and warmed up
"""
import argparse
import json
import logging
import math
import signal
import socket
import sys
from types import FrameType
from typing import Annotated, Any, Dict, List, Literal, Optional, Sequence, Type, cast

import numpy as np
import sklearn
import uvicorn
from fastapi import Body, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, create_model

from pipeline.model import Model
from pipeline.storage import StorageError, get_latest_model
from pipeline.utils import StageArgumentParser, configure_logger

API_VERSION = "0.1"
API_PREFIX = f"/api/v{API_VERSION}"
PREDICT_PATH = f"{API_PREFIX}/time_to_dispatch"
PREDICT_BATCH_PATH = f"{API_PREFIX}/time_to_dispatch/batch"
MODEL_PATH = f"{API_PREFIX}/model"
HEALTH_PATH = "/health"
READY_PATH = "/ready"
DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 8000
MAX_BATCH_SIZE = 1000
# The tree compares features as float32 (largest about 3.4e38, beyond which scikit-learn's
# predict fails); a day never sees a billion orders, so anything above is a client error.
MAX_ORDERS_PLACED = 1e9
# Kubernetes waits 30 s by default between SIGTERM and SIGKILL; requests still running
# after this are cancelled so that the process exits cleanly before it is killed.
GRACEFUL_SHUTDOWN_SECONDS = 25
# uvicorn's default backlog of connections waiting to be accepted.
LISTEN_BACKLOG = 2048
# Predictions from the exact pure-Python tree walk and from the estimator must agree to this.
FAST_PATH_TOLERANCE = 1e-9
USAGE = "usage: python -m pipeline.serve_model S3_BUCKET [--host HOST] [--port PORT] [--access-log]"

log = logging.getLogger(__name__)


class ModelCompatibilityError(Exception):
    """The model artefact cannot be served faithfully by this code and these libraries."""


class Prediction(BaseModel):
    """One estimate, and exactly which model made it."""

    est_hours_to_dispatch: float = Field(description="Estimated hours until the order is dispatched.")
    model_version: str = Field(description="The model artefact that made the estimate, with its lineage.")


class PredictionRequest(BaseModel):
    """A prediction request; `build_request_model` narrows `product_code` to a model's codes.

    `orders_placed` must be a JSON number (not a string or a boolean), finite, from 0 to
    MAX_ORDERS_PLACED. Unknown fields are rejected, so that a misspelt or unsupported field is
    a 422 naming it rather than silently ignored.
    """

    model_config = ConfigDict(extra="forbid")

    product_code: str = Field(description="A product code the model was trained on.")
    orders_placed: float = Field(
        ge=0,
        le=MAX_ORDERS_PLACED,
        allow_inf_nan=False,
        strict=True,
        description="Orders already placed today: a finite number from 0 to 1e9.",
        examples=[112],
    )


def build_request_model(product_codes: Sequence[str]) -> Type[PredictionRequest]:
    """The request body of a prediction, accepting exactly the given product codes.

    Built per model, so that validation and the OpenAPI schema (an enum of the codes) follow
    the codes the model was trained on.

    Args:
        product_codes: the codes the model was trained on.

    Returns:
        A subclass of `PredictionRequest`, also named `PredictionRequest`.

    Raises:
        ValueError: if there are no product codes.
    """
    codes = tuple(product_codes)
    if not codes:
        raise ValueError("a request model needs at least one product code")
    return create_model(
        "PredictionRequest",
        __base__=PredictionRequest,
        __doc__="Estimate the hours to dispatch an order for a product, given today's orders so far.",
        product_code=(
            cast(Any, Literal)[codes],
            Field(description="A product code the model was trained on.",
                  json_schema_extra={"examples": [codes[0]]}),
        ),
    )


def create_app(model: Model) -> FastAPI:
    """The service's app, answering with `model`.

    Production and tests use this same factory with a real model injected.

    Args:
        model: a loaded model artefact (see `load_model`).

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
        version=API_VERSION,
        description=f"Estimated hours until an order is dispatched. Serving model {version}.",
    )
    app.add_exception_handler(RequestValidationError, validation_error_response)

    # `async def` without any awaiting: the tree walk takes microseconds, so running it on the
    # event loop is far cheaper than a hop to the thread pool that FastAPI uses for `def`.
    @app.post(PREDICT_PATH, response_model=Prediction, summary="Estimate the hours to dispatch")
    async def time_to_dispatch(request: request_model) -> Prediction:  # type: ignore[valid-type]
        body = cast(PredictionRequest, request)
        return Prediction(
            est_hours_to_dispatch=model.predict_one(body.product_code, body.orders_placed),
            model_version=version,
        )

    # One vectorised call of the estimator for the whole batch; a batch of 1,000 takes well
    # under a millisecond, so it too stays on the event loop.
    @app.post(PREDICT_BATCH_PATH, response_model=List[Prediction], summary="Estimate for many requests")
    async def time_to_dispatch_batch(
        requests: Annotated[  # type: ignore[valid-type]
            List[request_model], Body(min_length=1, max_length=MAX_BATCH_SIZE)
        ],
    ) -> List[Prediction]:
        bodies = cast(List[PredictionRequest], requests)
        estimates = model.predict(
            [body.product_code for body in bodies], [body.orders_placed for body in bodies]
        )
        return [Prediction(est_hours_to_dispatch=float(e), model_version=version) for e in estimates]

    @app.get(MODEL_PATH, summary="The model's lineage")
    async def model_lineage() -> Dict[str, Any]:
        return cast(Dict[str, Any], lineage)

    @app.get(HEALTH_PATH, summary="Liveness")
    async def health() -> Dict[str, str]:
        return {"status": "ok"}

    # The factory only ever gets a loaded model, and `main` warms it up before the port opens,
    # so whenever this can answer, the service is ready.
    @app.get(READY_PATH, summary="Readiness: a model is loaded and warmed up")
    async def ready() -> Dict[str, str]:
        return {"status": "ready", "model_version": version}

    return app


async def validation_error_response(request: Request, error: Exception) -> JSONResponse:
    """FastAPI's standard 422 body, also for requests holding NaN or Infinity.

    Python's JSON parser accepts the literals `NaN` and `Infinity`, the request is then
    rejected, and the standard handler would echo the value back and fail to render it as
    JSON (a 500). Here such inputs are echoed as the strings `"NaN"`, `"Infinity"` and
    `"-Infinity"` instead.
    """
    errors = cast(RequestValidationError, error).errors()
    return JSONResponse(status_code=422, content={"detail": _json_safe(jsonable_encoder(errors))})


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def main(bucket: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, access_log: bool = False) -> None:
    """Load, check and warm up the newest model, then serve it until SIGTERM or SIGINT.

    Args:
        bucket: the S3 bucket whose `models/` holds the artefacts.
        host: the address to listen on.
        port: the TCP port to listen on.
        access_log: log one line per request (costs throughput).

    Raises:
        StorageError: no model artefact, or it is tampered with, corrupt or unreadable.
        ModelCompatibilityError: the artefact was trained with another scikit-learn version,
            or its fast path disagrees with its estimator.
        OSError: the port cannot be opened.
    """
    model = load_model(bucket)
    app = create_app(model)
    warm_up(model)
    log.info(f"serving model {model}")
    sock = open_port(host, port)
    run_server(app, sock, access_log)


def load_model(bucket: str) -> Model:
    """The newest verified model artefact in the bucket, checked against the installed scikit-learn.

    Raises:
        StorageError: as `storage.get_latest_model`.
        ModelCompatibilityError: as `check_library_versions`.
    """
    model = get_latest_model(bucket)
    log.info(f"loaded model artefact s3://{bucket}/{model.artefact_key}")
    check_library_versions(model)
    return model


def check_library_versions(model: Model, installed: str = sklearn.__version__) -> None:
    """Refuse a model whose recorded scikit-learn version is not the installed one.

    A pickled estimator is only guaranteed to behave the same under the version that made it.

    Raises:
        ModelCompatibilityError: naming both versions.
    """
    recorded = model.library_versions.get("scikit-learn")
    if recorded != installed:
        raise ModelCompatibilityError(
            f"model artefact {model.artefact_key} was trained with scikit-learn {recorded}, but "
            f"scikit-learn {installed} is installed; refusing to serve it (retrain the model or "
            f"install scikit-learn=={recorded})"
        )


def warm_up(model: Model) -> None:
    """Exercise both prediction paths for every product code and check they agree.

    Builds the fast path's tables before the first request, and compares it with the
    estimator at every half order from 0 to the largest `orders_placed` seen in training
    and at every split threshold of the tree.

    Raises:
        ModelCompatibilityError: if the fast path and the estimator disagree anywhere.
    """
    orders = np.arange(0.0, model.monotonicity.max_orders_placed + 1.0, 0.5)
    thresholds = model.estimator.tree_.threshold[model.estimator.tree_.feature == 0]
    orders = np.unique(np.concatenate([orders, thresholds, np.nextafter(thresholds, np.inf)]))
    orders = orders[(orders >= 0) & (orders <= MAX_ORDERS_PLACED)]
    for code in model.product_codes:
        expected = model.predict([code] * len(orders), orders)
        fast = np.array([model.predict_one(code, float(value)) for value in orders])
        wrong = np.flatnonzero(np.abs(fast - expected) > FAST_PATH_TOLERANCE)
        if wrong.size:
            first = wrong[0]
            raise ModelCompatibilityError(
                f"the fast prediction path disagrees with the estimator for {code} at "
                f"{wrong.size} point(s), e.g. orders_placed={orders[first]}: {fast[first]} vs "
                f"{expected[first]}; refusing to serve model {model}"
            )
    log.info(f"warmed up: both prediction paths agree for {len(model.product_codes)} product codes")


def open_port(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port.

    Opened by the service rather than by uvicorn so that failing to get the port is one
    clear error of ours rather than a log line and an exit from inside uvicorn.

    The socket is made with the protocol number getaddrinfo gives (IPPROTO_TCP), not 0:
    asyncio turns Nagle's algorithm off (TCP_NODELAY) only on connections whose socket says
    it is TCP, and with Nagle on, a response written in two parts waits for the client's
    delayed ACK, adding about 40 ms to every request.

    Raises:
        OSError: if the address cannot be resolved or bound (e.g. the port is in use).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise OSError(f"cannot listen on {host}:{port}: {error}") from error
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {error}") from error
    log.info(f"listening on http://{host}:{port}")
    return sock


def uvicorn_config(app: FastAPI, access_log: bool = False) -> uvicorn.Config:
    """The uvicorn settings of the service: one worker, the project's log format, graceful stop.

    `log_config=None` leaves logging alone, so uvicorn's records propagate to the root
    logger that `configure_logger` set up. Access logging is off unless asked for: a log
    line per request costs a noticeable share of throughput at this request size.
    """
    return uvicorn.Config(
        app,
        workers=1,
        log_config=None,
        access_log=access_log,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )


def run_server(app: FastAPI, sock: socket.socket, access_log: bool = False) -> None:
    """Serve `app` on an open socket until SIGTERM or SIGINT, then shut down gracefully.

    On the signal uvicorn stops accepting connections, lets requests in flight finish (for
    up to GRACEFUL_SHUTDOWN_SECONDS) and returns.
    """
    server = uvicorn.Server(uvicorn_config(app, access_log))
    # After a graceful shutdown uvicorn re-raises the signal that caused it, to the handler
    # that was there before it started; with Python's defaults SIGTERM would then kill the
    # process (exit code -15). A clean shutdown is a success, so the handlers here only log.
    previous = {sig: signal.signal(sig, _log_stop_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _log_stop_signal(signum: int, frame: Optional[FrameType]) -> None:
    log.info(f"stopped by {signal.Signals(signum).name} after a graceful shutdown")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the CLI arguments.

    Raises:
        ValueError: with the reason, for any bad argument.
    """
    parser = StageArgumentParser(prog="serve_model.py")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_stage_args(argv)
    if not args.host.strip():
        raise ValueError("--host is empty")
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    return args


if __name__ == "__main__":
    configure_logger()
    try:
        arguments = parse_args(sys.argv[1:])
    except ValueError as error:
        log.error(f"Invalid arguments passed to serve_model.py: {error}; {USAGE}")
        sys.exit(1)
    try:
        main(arguments.bucket, arguments.host, arguments.port, arguments.access_log)
    except (StorageError, ModelCompatibilityError, OSError) as error:
        log.error(f"serve_model failed: {error}")
        sys.exit(1)
    except Exception as error:  # the one ERROR line must also cover the unforeseen
        log.error(f"serve_model failed unexpectedly: {error!r}")
        sys.exit(1)
