"""The service process's life: model checks before serving, the port, uvicorn, the stop.

The serve stage loads a model (`model_loading.py`), refuses one that this code cannot serve
faithfully (another scikit-learn version there, a tree walk that disagrees with the estimator
here), then opens its port
and runs uvicorn on it until SIGTERM or SIGINT, when it stops gracefully.

uvicorn runs on the fastest stack installed: the uvloop event loop and the httptools HTTP
parser (what `uvicorn[standard]` brings, pinned in requirements_pipe.txt), each falling back
to the standard library's asyncio loop and the pure-Python h11 parser where it is missing.
"""
import gc
import importlib
import logging
import signal
import socket
import threading
from types import FrameType
from typing import List, NamedTuple, Optional

import numpy as np
import uvicorn
from fastapi import FastAPI

from pipeline.artefact.model import Model
from pipeline.serve.connections import protocol_class
# Re-exported: the serve stage's checks of a model, before and after loading it, in one place.
from pipeline.serve.model_loading import ModelCompatibilityError, check_library_versions  # noqa: F401
from pipeline.settings import ARTEFACT, SERVE

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = logging.getLogger(__name__)


class ServerStack(NamedTuple):
    """uvicorn's event loop and HTTP parser, by uvicorn's names for them."""

    loop: str
    http: str

    def __str__(self) -> str:
        return f"{self.loop} event loop, {self.http} HTTP parser"


FAST_STACK = ServerStack(loop="uvloop", http="httptools")
PURE_PYTHON_STACK = ServerStack(loop="asyncio", http="h11")
SERVER_STACKS = {"auto": FAST_STACK, "pure-python": PURE_PYTHON_STACK}


def warm_up(model: Model) -> None:
    """Exercise both prediction paths for every product code and check they agree.

    Builds the tables of the tree walk (`Model.predict_one`, what the single endpoint uses;
    for a calibrated model, the binary search over its breakpoints) before the first request,
    and compares it with the estimator (what the batch endpoint uses) at every half order from
    0 to the largest `orders_placed` seen in training, at every split threshold of the tree and
    at every breakpoint of the calibration, and just above each.

    Raises:
        ModelCompatibilityError: if the tree walk and the estimator disagree anywhere.
    """
    orders = np.arange(0.0, model.monotonicity.max_orders_placed + 1.0, 0.5)
    thresholds = model.estimator.tree_.threshold[model.estimator.tree_.feature == 0]
    if model.calibration is not None:
        breakpoints = [steps.thresholds for steps in model.calibration.per_product.values()]
        thresholds = np.concatenate([thresholds, *[np.asarray(b, dtype=np.float64) for b in breakpoints]])
    orders = np.unique(np.concatenate([orders, thresholds, np.nextafter(thresholds, np.inf)]))
    orders = orders[(orders >= 0) & (orders <= ARTEFACT.max_accepted_orders_placed)]
    for code in model.product_codes:
        expected = model.predict([code] * len(orders), orders)
        walked = np.array([model.predict_one(code, float(value)) for value in orders])
        wrong = np.flatnonzero(np.abs(walked - expected) > SERVE.tree_walk_tolerance)
        if wrong.size:
            first = wrong[0]
            raise ModelCompatibilityError(
                f"the fast prediction path disagrees with the estimator for {code} at "
                f"{wrong.size} point(s), e.g. orders_placed={orders[first]}: {walked[first]} vs "
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
        sock.listen(SERVE.listen_backlog)
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {error}") from error
    log.info(f"listening on http://{host}:{port}")
    return sock


def available_stack(wanted: ServerStack = FAST_STACK) -> ServerStack:
    """The wanted event loop and HTTP parser, each replaced by the pure-Python one if missing.

    uvloop and httptools are compiled extensions: a platform without their wheels, or an
    image without them installed, still serves, on asyncio and h11.
    """
    loop = wanted.loop if _importable(wanted.loop) else PURE_PYTHON_STACK.loop
    http = wanted.http if _importable(wanted.http) else PURE_PYTHON_STACK.http
    return ServerStack(loop, http)


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def uvicorn_config(app: FastAPI, stack: ServerStack) -> uvicorn.Config:
    """The uvicorn settings of the service: one worker, the project's log format, graceful stop,
    keep-alive, and uvicorn's protocol for the stack's parser with the service's limits on heads,
    requests and connections (`pipeline/serve/connections.py`).

    `log_config=None` leaves logging alone, so uvicorn's records propagate to the root
    logger that `configure_logger` set up. uvicorn's own access log stays off: the app logs
    requests itself when asked (`create_app(access_log=True)`), with the route and duration.
    """
    return uvicorn.Config(
        app,
        workers=1,
        loop=stack.loop,
        http=protocol_class(stack.http),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=SERVE.graceful_shutdown_seconds,
        timeout_keep_alive=SERVE.keep_alive_timeout_seconds,
        h11_max_incomplete_event_size=SERVE.max_header_bytes,
        # Requests, not connections, are limited by the protocol (connections.py): uvicorn's
        # limit counts connections whose head never ends, and logs every refusal.
        limit_concurrency=None,
        backlog=SERVE.listen_backlog,
        # The app has no start-up or shutdown handlers (the model is loaded and warmed up
        # before uvicorn starts); without the lifespan task, a stop signal that arrives while
        # uvicorn starts cannot leave that task to be cancelled with a traceback.
        lifespan="off",
    )


class StopRequested(BaseException):
    """SIGTERM or SIGINT arrived: raised by the handler `stop_on_signals` installs, so that a
    stop during start-up ends it at once (a BaseException, like KeyboardInterrupt, so that no
    `except Exception` on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.signal_name}")


def stop_on_signals() -> None:
    """From now on SIGTERM and SIGINT raise StopRequested in the main thread.

    Installed before the service loads its model, so that a stop at any moment before uvicorn
    takes the signals over (loading, warming up, opening the port) ends the process cleanly,
    and none is lost or kills it with the signal's default action.
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_stop_requested)


def _raise_stop_requested(signum: int, frame: Optional[FrameType]) -> None:
    raise StopRequested(signum)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which on a first SIGTERM goes on serving for `drain_seconds` before
    its graceful shutdown starts.

    When Kubernetes ends a pod it sends SIGTERM while, at the same time, the Service stops
    routing to it; until every node has caught up, new connections still arrive. Serving on
    meanwhile answers them, where closing the port at once would refuse them (seen as refused
    requests during a rollout on a real cluster, docs/deployment.md). A second SIGTERM, or a
    SIGINT, stops at once, gracefully.
    """

    def __init__(self, config: uvicorn.Config, drain_seconds: float = 0.0) -> None:
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self._drain: Optional[threading.Timer] = None

    def handle_exit(self, sig: int, frame: Optional[FrameType]) -> None:
        if sig == signal.SIGTERM and self.drain_seconds > 0 and self._drain is None and not self.should_exit:
            log.info(f"SIGTERM: serving on for {self.drain_seconds:g} s while connections drain away, then stopping")
            self._drain = threading.Timer(self.drain_seconds, super().handle_exit, (sig, frame))
            self._drain.daemon = True
            self._drain.start()
            return
        if self._drain is not None:
            self._drain.cancel()
        super().handle_exit(sig, frame)


def run_server(
    app: FastAPI, sock: socket.socket, stack: ServerStack = FAST_STACK, drain_seconds: float = 0.0
) -> None:
    """Serve `app` on an open socket until SIGTERM or SIGINT, then shut down gracefully.

    Runs on `stack` as far as it is installed (see `available_stack`), and logs which.
    On SIGTERM it first serves on for `drain_seconds` (see DrainingServer); then uvicorn stops
    accepting connections, lets requests in flight finish (for up to SERVE.graceful_shutdown_seconds)
    and returns.

    Raises:
        StopRequested: the signal arrived before the server was built.
    """
    if not 0 <= drain_seconds <= SERVE.max_drain_seconds:
        raise ValueError(f"drain_seconds must be in 0..{SERVE.max_drain_seconds}, got {drain_seconds}")
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    stop_on_signals()
    try:
        running = available_stack(stack)
        if running != stack:
            log.warning(f"{stack} asked for, but not all installed: falling back to the {running}")
        log.info(f"server stack: {running}")
        server = DrainingServer(uvicorn_config(app, running), drain_seconds)
        received: List[int] = []

        # From here on a stop signal goes to the server, whether uvicorn has installed its own
        # handlers yet (then it starts, and stops at once or after the drain) or has restored
        # ours after a graceful shutdown and re-raises the signal that caused it.
        def stop(signum: int, frame: Optional[FrameType]) -> None:
            received.append(signum)
            server.handle_exit(signum, frame)

        for sig in STOP_SIGNALS:
            signal.signal(sig, stop)
        server.run(sockets=[sock])
        if received:
            log.info(f"stopped by {signal.Signals(received[0]).name} after a graceful shutdown")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def freeze_start_up_objects() -> None:
    """Move everything start-up made (the libraries' objects, the model) out of the garbage
    collector's reach for the life of the process.

    They are never freed while the service runs, yet each full collection would scan them all:
    a pause of 110-140 ms, every few seconds under load, which set the service's p99 latency
    (docs/benchmarks.md). Frozen, a full collection scans only what requests made.
    """
    gc.collect()
    gc.freeze()
