"""The service's Prometheus metrics and its access log: `GET /metrics` and one ASGI middleware.

What `/metrics` exposes (the Prometheus text format, `prometheus-client`'s exposition):

    time_to_dispatch_http_requests_total{route, method, status}     counter
    time_to_dispatch_http_request_duration_seconds{route}           histogram, sub-millisecond buckets
    time_to_dispatch_predictions_total{product_code}                 counter, batch items one by one
    time_to_dispatch_extrapolated_predictions_total{product_code}    counter, those flagged extrapolated
    time_to_dispatch_requested_orders_placed{product_code}          histogram of the requests' orders_placed
    time_to_dispatch_model_info{artefact_id, model_version, ...}    1, labelled with the served model
    time_to_dispatch_model_created_timestamp_seconds                gauge
    time_to_dispatch_model_dataset_timestamp_seconds                gauge, the training dataset's timestamp
    time_to_dispatch_model_age_seconds                              gauge, computed at scrape time
    time_to_dispatch_model_training_orders_placed_max                gauge, largest orders_placed trained on
    process_*, python_*                                             the library's process metrics

`route` is the route's template (`/api/v0.1/time_to_dispatch`), never the raw path, and every
path that matches no route is `<unmatched>`; `method` is one of HTTP's methods or `other` (h11
accepts any token as a method); `status` a status code from 100 to 599 or `other`: every label
comes from a closed set, so that a scanner cannot grow the number of series. Every request is
counted, whatever answers it: the 422s of validation, 404s, 405s, and 500s from an unhandled
exception.

Why not the library's `Counter` and `Histogram`: each update takes a lock and a label lookup,
and a batch of 1,000 would take 1,000 histogram updates. The service updates its figures only
on the event loop's thread (the middleware and the `async def` endpoints), so plain integers
and lists suffice; a custom collector turns them into metric families when Prometheus scrapes,
also on the event loop (`/metrics` is `async def`). docs/benchmarks.md has the measurement.
"""
import bisect
import logging
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Dict, Iterable, Iterator, List, MutableMapping, Optional, Sequence, Tuple

import numpy as np
from fastapi import FastAPI, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
# The classic text format (0.0.4), which every Prometheus version reads; what the library
# itself answers a scraper that does not ask for another.
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from pipeline.artefact.model import Model
from pipeline.settings import API

PREFIX = "time_to_dispatch"
UNMATCHED_ROUTE = "<unmatched>"
# The methods of RFC 9110 and PATCH; any other is counted as OTHER_LABEL.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
OTHER_LABEL = "other"
# The service answers in a fraction of a millisecond; the buckets resolve that, and still
# separate the slow tail up to seconds.
LATENCY_BUCKETS_SECONDS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
)
# Training weeks have orders_placed from 0 to about 320; the upper buckets show requests far
# outside that range (the alert compares them with the model's largest trained value).
ORDERS_PLACED_BUCKETS = (
    0.0, 10.0, 25.0, 50.0, 75.0, 100.0, 150.0, 200.0, 250.0, 300.0, 350.0, 400.0, 500.0, 750.0, 1000.0,
    2500.0, 10000.0,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger(f"{__name__}.access")


class _Histogram:
    """Bucket counts and a sum, updated without locks (one thread only)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def observe_many(self, values: np.ndarray) -> None:
        # searchsorted(side="left") puts a value equal to a bound in that bound's bucket (le).
        for index, count in zip(*np.unique(np.searchsorted(self.bounds, values, side="left"), return_counts=True)):
            self.counts[int(index)] += int(count)
        self.total += float(values.sum())

    def cumulative(self) -> List[Tuple[str, float]]:
        buckets, running = [], 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts):
            running += count
            buckets.append((bound, float(running)))
        return buckets


class ServiceMetrics(Collector):
    """The service's own figures: requests, latencies, predictions and the served model.

    Also the registry `/metrics` exposes, holding these and the process's metrics. Update it
    only from the event loop's thread.
    """

    def __init__(self, model: Model, clock: Callable[[], float] = time.time) -> None:
        self.model = model
        self.clock = clock
        self.requests: Dict[Tuple[str, str, str], int] = {}
        self.latency: Dict[str, _Histogram] = {}
        self.predictions = {code: 0 for code in model.product_codes}
        self.extrapolated = {code: 0 for code in model.product_codes}
        self.orders_placed = {code: _Histogram(ORDERS_PLACED_BUCKETS) for code in model.product_codes}
        self.registry = CollectorRegistry(auto_describe=True)
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
        self.registry.register(self)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration; a method or status outside the closed
        sets is counted as `other`."""
        key = (route, method if method in KNOWN_METHODS else OTHER_LABEL,
               str(status) if 100 <= status <= 599 else OTHER_LABEL)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.latency.get(route)
        if histogram is None:
            histogram = self.latency[route] = _Histogram(LATENCY_BUCKETS_SECONDS)
        histogram.observe(seconds)

    def observe_prediction(self, product_code: str, orders_placed: float, extrapolated: bool) -> None:
        """Count one prediction; `product_code` is one of the model's (the API validated it)."""
        self.predictions[product_code] += 1
        self.orders_placed[product_code].observe(orders_placed)
        if extrapolated:
            self.extrapolated[product_code] += 1

    def observe_predictions(self, product_codes: Sequence[str], orders_placed: Sequence[float],
                            extrapolated: np.ndarray) -> None:
        """Count a batch's predictions, each one singly."""
        codes = np.asarray(product_codes)
        orders = np.asarray(orders_placed, dtype=np.float64)
        for code in np.unique(codes):
            chosen = codes == code
            selected = orders[chosen]
            self.predictions[str(code)] += int(selected.size)
            self.orders_placed[str(code)].observe_many(selected)
            self.extrapolated[str(code)] += int(np.count_nonzero(extrapolated[chosen]))

    def exposition(self) -> bytes:
        """Every metric of the registry in the Prometheus text format."""
        return bytes(generate_latest(self.registry))

    def collect(self) -> Iterator[Metric]:
        """The metric families, built from the current figures (prometheus-client's Collector)."""
        requests = CounterMetricFamily(
            f"{PREFIX}_http_requests", "HTTP requests answered, by route template, method and status code.",
            labels=["route", "method", "status"])
        for (route, method, status), count in sorted(self.requests.items()):
            requests.add_metric([route, method, status], count)
        yield requests
        yield _histogram_family(
            f"{PREFIX}_http_request_duration_seconds",
            "Time from receiving a request to having sent its response, by route template.",
            ["route"], (([route], histogram) for route, histogram in sorted(self.latency.items())))
        predictions = CounterMetricFamily(
            f"{PREFIX}_predictions", "Estimates made, by product code (each batch item counts once).",
            labels=["product_code"])
        for code, count in self.predictions.items():
            predictions.add_metric([code], count)
        yield predictions
        extrapolated = CounterMetricFamily(
            f"{PREFIX}_extrapolated_predictions", "Estimates for an orders_placed outside the range the model "
            "was trained on for the product, by product code (each batch item counts once).",
            labels=["product_code"])
        for code, count in self.extrapolated.items():
            extrapolated.add_metric([code], count)
        yield extrapolated
        yield _histogram_family(
            f"{PREFIX}_requested_orders_placed",
            "The orders_placed of the estimates requested, by product code.",
            ["product_code"], (([code], histogram) for code, histogram in self.orders_placed.items()))
        yield from self._model_metrics()

    def _model_metrics(self) -> Iterator[Metric]:
        model = self.model
        created = model.created_at.timestamp()
        info = GaugeMetricFamily(
            f"{PREFIX}_model_info", "The served model artefact (always 1), labelled with its identity.",
            labels=["artefact_id", "model_version", "artefact_key", "dataset_key", "dataset_timestamp",
                    "git_commit"])
        info.add_metric([model.artefact_id, str(model), model.artefact_key or "", model.dataset.key,
                         _utc_iso(model.dataset.timestamp), model.git_commit], 1)
        yield info
        yield GaugeMetricFamily(f"{PREFIX}_model_created_timestamp_seconds",
                                "When the served model was trained (Unix time).", value=created)
        yield GaugeMetricFamily(f"{PREFIX}_model_dataset_timestamp_seconds",
                                "The timestamp of the served model's training dataset (Unix time).",
                                value=_as_utc(model.dataset.timestamp).timestamp())
        yield GaugeMetricFamily(f"{PREFIX}_model_age_seconds",
                                "Seconds since the served model was trained, at scrape time.",
                                value=self.clock() - created)
        yield GaugeMetricFamily(f"{PREFIX}_model_training_orders_placed_max",
                                "The largest orders_placed in the served model's training data.",
                                value=float(model.monotonicity.max_orders_placed))


def _histogram_family(name: str, documentation: str, label_names: Sequence[str],
                      series: Iterable[Tuple[Sequence[str], _Histogram]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=label_names)
    for labels, histogram in series:
        family.add_metric(list(labels), histogram.cumulative(), histogram.total)
    return family


def _as_utc(moment: datetime) -> datetime:
    # Dataset timestamps come from key names and may be naive; they are taken as UTC.
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _utc_iso(moment: datetime) -> str:
    return _as_utc(moment).isoformat()


class RequestObserver:
    """Pure ASGI middleware: counts and times every HTTP request, and logs it if asked to.

    It labels a request with the template of the route that answered it: FastAPI puts its
    route in the scope when it matches (`scope["route"]`); the few plain Starlette routes
    (`/openapi.json`) are matched here, every file of a mount (the docs' assets) is labelled
    with the mount's path, and anything else is `<unmatched>`.

    Args:
        app: the ASGI app to wrap.
        metrics: where to count, or None for the access log alone.
        log_requests: log one line per request (route, status, duration) at INFO.
    """

    def __init__(self, app: ASGIApp, metrics: Optional[ServiceMetrics], log_requests: bool,
                 routes: Sequence[Any] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            seconds = time.perf_counter() - started
            route = self.route_template(scope)
            if self.metrics is not None:
                self.metrics.observe_request(route, scope["method"], status, seconds)
            if self.log_requests:
                log_request(scope, route, status, seconds)

    def route_template(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None:
            return str(route.path)
        if "endpoint" in scope:
            from starlette.routing import Match, Mount

            # A mount (the docs' assets) leaves its app as the endpoint and the scope's path
            # relative to itself, which could match another route: the mount's own path first.
            for candidate in self.routes:
                if isinstance(candidate, Mount) and candidate.app is scope["endpoint"]:
                    return str(candidate.path)
            for candidate in self.routes:
                if candidate.matches(scope)[0] != Match.NONE:
                    return str(candidate.path)
        return UNMATCHED_ROUTE


def log_request(scope: Scope, route: str, status: int, seconds: float) -> None:
    """One access-log line: client, request line and status as uvicorn logs them, then the
    route template and the duration."""
    client = scope.get("client")
    access_log.info(
        f'{client[0] if client else "-"} "{scope["method"]} {scope["path"]} HTTP/{scope.get("http_version", "1.1")}" '
        f"{status} route={route} duration_ms={seconds * 1000:.3f}"
    )


def instrument(app: FastAPI, metrics: Optional[ServiceMetrics], log_requests: bool = False) -> None:
    """Add `GET /metrics` (when `metrics` is given) and the request observer to the app.

    With neither metrics nor the access log, the app is left as it is.
    """
    if metrics is not None:
        @app.get(API.metrics_path, include_in_schema=False)
        async def prometheus_metrics() -> Response:
            return Response(metrics.exposition(), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    if metrics is not None or log_requests:
        app.add_middleware(RequestObserver, metrics=metrics, log_requests=log_requests,
                           routes=app.router.routes)
