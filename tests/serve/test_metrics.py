"""The service's Prometheus metrics and access log, through `TestClient` on the app production runs.

Every count is checked against what the test sent: requests by route template and status
(422s, 404s and 500s included), predictions per product code with batch items counted singly,
the histograms' buckets, and the served model's metrics.
"""
import logging
import math
from datetime import timedelta
from typing import List

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from pipeline.artefact.model import Model
from pipeline.serve import api_docs
from pipeline.serve.api import create_app
from pipeline.serve.metrics import (
    LATENCY_BUCKETS_SECONDS,
    ORDERS_PLACED_BUCKETS,
    UNMATCHED_ROUTE,
    ServiceMetrics,
)
from pipeline.settings import API
from tests.helpers import LOG_LINE, Scrape, parse_metrics

REQUESTS = "time_to_dispatch_http_requests_total"
LATENCY = "time_to_dispatch_http_request_duration_seconds"
PREDICTIONS = "time_to_dispatch_predictions_total"
ORDERS = "time_to_dispatch_requested_orders_placed"


def scrape(client: TestClient) -> Scrape:
    response = client.get(API.metrics_path)
    assert response.status_code == 200
    return parse_metrics(response.text)


def requests_counted(metrics: Scrape, route: str, status: int, method: str = "POST") -> float:
    return metrics.value(REQUESTS, route=route, method=method, status=str(status))


# --- GET /metrics ---------------------------------------------------------------------------

def test_metrics_are_served_by_default_in_the_prometheus_text_format(client: TestClient) -> None:
    response = client.get(API.metrics_path)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert {family.name for family in text_string_to_metric_families(response.text)} >= {
        "time_to_dispatch_http_requests", LATENCY, "time_to_dispatch_predictions", ORDERS,
        "time_to_dispatch_model_info", "time_to_dispatch_model_age_seconds",
    }


def test_metrics_can_be_turned_off(served_model: Model) -> None:
    client = TestClient(create_app(served_model, metrics=False))

    assert client.get(API.metrics_path).status_code == 404


def test_the_metrics_endpoint_is_not_in_the_api_docs(client: TestClient) -> None:
    assert API.metrics_path not in client.get("/openapi.json").json()["paths"]


# --- requests --------------------------------------------------------------------------------

def test_requests_are_counted_by_route_template_method_and_status(client: TestClient) -> None:
    for orders in (0, 12, 112):
        client.post(API.predict_path, json={"product_code": "SKU001", "orders_placed": orders})
    client.post(API.predict_batch_path, json=[{"product_code": "SKU002", "orders_placed": 5}] * 4)
    client.get(API.health_path)
    client.get(API.health_path)

    metrics = scrape(client)

    assert requests_counted(metrics, API.predict_path, 200) == 3
    assert requests_counted(metrics, API.predict_batch_path, 200) == 1
    assert requests_counted(metrics, API.health_path, 200, method="GET") == 2


def test_every_kind_of_422_is_counted_exactly(client: TestClient) -> None:
    invalid = [
        {"orders_placed": 10},
        {"product_code": "SKU999", "orders_placed": 10},
        {"product_code": "SKU001", "orders_placed": -1},
        {"product_code": "SKU001", "orders_placed": "ten"},
        {"product_code": "SKU001", "orders_placed": 10, "extra": 1},
    ]
    for body in invalid:
        assert client.post(API.predict_path, json=body).status_code == 422
    for text in ('{"product_code": "SKU001", "orders_placed": NaN}', "not json"):
        response = client.post(API.predict_path, content=text, headers={"Content-Type": "application/json"})
        assert response.status_code == 422
    assert client.post(API.predict_batch_path, json=[]).status_code == 422
    client.post(API.predict_path, json={"product_code": "SKU001", "orders_placed": 10})

    metrics = scrape(client)

    assert requests_counted(metrics, API.predict_path, 422) == 7
    assert requests_counted(metrics, API.predict_batch_path, 422) == 1
    assert requests_counted(metrics, API.predict_path, 200) == 1


def test_unmatched_paths_are_counted_under_one_label_not_their_raw_path(client: TestClient) -> None:
    for path in ("/wp-admin", f"{API.predict_path}/nothing/1", f"{API.predict_path}/nothing/2", "/.env"):
        assert client.get(path).status_code == 404

    metrics = scrape(client)

    assert requests_counted(metrics, UNMATCHED_ROUTE, 404, method="GET") == 4
    assert {labels["route"] for labels, _ in metrics.series(REQUESTS)} == {UNMATCHED_ROUTE}


def test_a_wrong_method_on_a_route_is_counted_under_the_routes_template(client: TestClient) -> None:
    assert client.get(API.predict_path).status_code == 405

    assert requests_counted(scrape(client), API.predict_path, 405, method="GET") == 1


def test_the_docs_routes_are_counted_under_their_own_paths(client: TestClient) -> None:
    client.get("/openapi.json")
    client.get(API.docs_path)

    metrics = scrape(client)

    assert requests_counted(metrics, "/openapi.json", 200, method="GET") == 1
    assert requests_counted(metrics, API.docs_path, 200, method="GET") == 1


def test_the_docs_assets_are_counted_under_their_folder_whatever_the_file(client: TestClient) -> None:
    # "health" is a file name that the path relative to the mount shares with another route.
    names = (api_docs.SWAGGER_JS, api_docs.SWAGGER_CSS, "no-such-file.js", "health")
    for name in names:
        client.get(f"{API.docs_assets_path}/{name}")

    metrics = scrape(client)

    assert requests_counted(metrics, API.docs_assets_path, 200, method="GET") == 2
    assert requests_counted(metrics, API.docs_assets_path, 404, method="GET") == 2
    assert {labels["route"] for labels, _ in metrics.series(REQUESTS)} == {API.docs_assets_path}


def test_an_unhandled_exception_is_counted_as_a_500(served_model: Model) -> None:
    app = create_app(served_model)

    @app.get("/fails")
    async def fails() -> None:
        raise RuntimeError("a bug")

    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/fails").status_code == 500

    assert requests_counted(scrape(client), "/fails", 500, method="GET") == 1


def test_scrapes_are_counted_too(client: TestClient) -> None:
    scrape(client)

    assert requests_counted(scrape(client), API.metrics_path, 200, method="GET") == 1


def test_latency_is_a_histogram_per_route_with_sub_millisecond_buckets(client: TestClient) -> None:
    for _ in range(5):
        client.post(API.predict_path, json={"product_code": "SKU003", "orders_placed": 50})
    client.get(API.health_path)

    metrics = scrape(client)

    assert metrics.value(f"{LATENCY}_count", route=API.predict_path) == 5
    assert metrics.value(f"{LATENCY}_count", route=API.health_path) == 1
    bounds = [float(labels["le"]) for labels, _ in metrics.series(f"{LATENCY}_bucket", route=API.predict_path)]
    assert bounds == [*LATENCY_BUCKETS_SECONDS, math.inf]
    assert sum(1 for bound in bounds if bound < 0.001) >= 3
    assert metrics.value(f"{LATENCY}_bucket", route=API.predict_path, le="+Inf") == 5
    assert 0 < metrics.value(f"{LATENCY}_sum", route=API.predict_path) < 5


# --- predictions -----------------------------------------------------------------------------

def test_predictions_are_counted_per_product_code_batch_items_singly(client: TestClient, served_model: Model) -> None:
    client.post(API.predict_path, json={"product_code": "SKU001", "orders_placed": 10})
    client.post(API.predict_path, json={"product_code": "SKU002", "orders_placed": 10})
    batch = [{"product_code": "SKU001", "orders_placed": 20}] * 7 + [{"product_code": "SKU005", "orders_placed": 1}] * 3
    client.post(API.predict_batch_path, json=batch)

    metrics = scrape(client)

    counts = {code: metrics.value(PREDICTIONS, product_code=code) for code in served_model.product_codes}
    assert counts == {"SKU001": 8, "SKU002": 1, "SKU003": 0, "SKU004": 0, "SKU005": 3}


def test_rejected_requests_count_no_prediction(client: TestClient) -> None:
    client.post(API.predict_path, json={"product_code": "SKU001", "orders_placed": -5})
    client.post(API.predict_batch_path, json=[{"product_code": "SKU001", "orders_placed": 5}, {"product_code": "X"}])

    assert scrape(client).value(PREDICTIONS, product_code="SKU001") == 0


def test_requested_orders_placed_is_a_histogram_per_product_code(client: TestClient) -> None:
    client.post(API.predict_path, json={"product_code": "SKU004", "orders_placed": 10})
    client.post(API.predict_batch_path, json=[{"product_code": "SKU004", "orders_placed": v} for v in (60, 400, 10)])
    client.post(API.predict_path, json={"product_code": "SKU002", "orders_placed": 3000})

    metrics = scrape(client)

    sku004 = {labels["le"]: value for labels, value in metrics.series(f"{ORDERS}_bucket", product_code="SKU004")}
    assert [float(le) for le in sku004] == [*ORDERS_PLACED_BUCKETS, math.inf]
    assert (sku004["0.0"], sku004["10.0"], sku004["50.0"], sku004["75.0"], sku004["350.0"], sku004["400.0"]) == (
        0, 2, 2, 3, 3, 4)
    assert metrics.value(f"{ORDERS}_count", product_code="SKU004") == 4
    assert metrics.value(f"{ORDERS}_sum", product_code="SKU004") == 480
    assert metrics.value(f"{ORDERS}_bucket", product_code="SKU002", le="2500.0") == 0
    assert metrics.value(f"{ORDERS}_bucket", product_code="SKU002", le="10000.0") == 1


def test_single_and_batch_observations_fall_in_the_same_buckets(served_model: Model) -> None:
    one_by_one, together = ServiceMetrics(served_model), ServiceMetrics(served_model)
    values = [0.0, 0.5, 10.0, 10.000001, 299.5, 300.0, 1e9]
    flags = [value > 299 for value in values]
    for value, flag in zip(values, flags):
        one_by_one.observe_prediction("SKU001", value, flag)
    together.observe_predictions(["SKU001"] * len(values), values, np.array(flags))

    assert one_by_one.orders_placed["SKU001"].counts == together.orders_placed["SKU001"].counts
    assert one_by_one.orders_placed["SKU001"].total == together.orders_placed["SKU001"].total
    assert one_by_one.extrapolated == together.extrapolated == {**{c: 0 for c in served_model.product_codes},
                                                                "SKU001": 3}


# --- the served model ------------------------------------------------------------------------

def test_model_info_is_labelled_with_the_served_artefact(client: TestClient, served_model: Model) -> None:
    [(labels, value)] = scrape(client).series("time_to_dispatch_model_info")

    assert value == 1
    assert labels == {
        "artefact_id": served_model.artefact_id,
        "model_version": str(served_model),
        "artefact_key": served_model.artefact_key,
        "dataset_key": served_model.dataset.key,
        "dataset_timestamp": served_model.dataset.timestamp.isoformat(),
        "git_commit": served_model.git_commit,
    }


def test_model_timestamps_and_training_range_are_gauges(client: TestClient, served_model: Model) -> None:
    metrics = scrape(client)

    assert metrics.value("time_to_dispatch_model_created_timestamp_seconds") == served_model.created_at.timestamp()
    assert metrics.value("time_to_dispatch_model_dataset_timestamp_seconds") == (
        served_model.dataset.timestamp.timestamp())
    assert metrics.value("time_to_dispatch_model_training_orders_placed_max") == (
        served_model.monotonicity.max_orders_placed)


def test_model_age_is_computed_when_scraped(served_model: Model) -> None:
    now = [served_model.created_at.timestamp() + 3600.0]
    metrics = ServiceMetrics(served_model, clock=lambda: now[0])

    first = parse_metrics(metrics.exposition()).value("time_to_dispatch_model_age_seconds")
    now[0] += timedelta(days=15).total_seconds()
    later = parse_metrics(metrics.exposition()).value("time_to_dispatch_model_age_seconds")

    assert (first, later) == (3600.0, 3600.0 + 15 * 86400)


def test_the_process_metrics_are_exposed(client: TestClient) -> None:
    metrics = scrape(client)

    assert metrics.value("process_resident_memory_bytes") > 0
    assert metrics.value("process_cpu_seconds_total") >= 0
    assert metrics.series("python_info")


# --- the access log --------------------------------------------------------------------------

def logged_requests(caplog: pytest.LogCaptureFixture) -> List[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "pipeline.serve.metrics.access"]


def test_access_log_is_one_line_per_request_with_route_status_and_duration(
    served_model: Model, caplog: pytest.LogCaptureFixture
) -> None:
    client = TestClient(create_app(served_model, access_log=True))
    caplog.set_level(logging.INFO)

    client.post(API.predict_path, json={"product_code": "SKU001", "orders_placed": 10})
    client.post(API.predict_path, json={"product_code": "SKU001"})
    client.get("/no/such/path")

    messages = [record.getMessage() for record in logged_requests(caplog)]
    assert len(messages) == 3
    path = API.predict_path
    assert messages[0].startswith(f'testclient "POST {path} HTTP/1.1" 200 route={path} duration_ms=')
    assert f'"POST {API.predict_path} HTTP/1.1" 422 route={API.predict_path} ' in messages[1]
    assert f'"GET /no/such/path HTTP/1.1" 404 route={UNMATCHED_ROUTE} ' in messages[2]
    assert all(float(message.rsplit("duration_ms=", 1)[1]) > 0 for message in messages)


def test_access_log_lines_are_in_the_project_format(served_model: Model, capsys: pytest.CaptureFixture[str]) -> None:
    import warnings

    from pipeline.utils import configure_logger

    root = logging.getLogger()
    handlers, level, showwarning = list(root.handlers), root.level, warnings.showwarning
    try:
        configure_logger()
        TestClient(create_app(served_model, access_log=True)).get(API.health_path)
    finally:  # leave logging as the other tests expect it
        root.handlers[:] = handlers
        root.setLevel(level)
        warnings.showwarning = showwarning

    [line] = [line for line in capsys.readouterr().out.splitlines() if f"route={API.health_path}" in line]
    assert LOG_LINE.match(line)
    assert " - INFO - metrics.log_request - " in line


def test_requests_are_not_logged_without_the_access_log(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    client.post(API.predict_path, json={"product_code": "SKU001", "orders_placed": 10})

    assert logged_requests(caplog) == []


def test_the_access_log_works_with_metrics_off(served_model: Model, caplog: pytest.LogCaptureFixture) -> None:
    client = TestClient(create_app(served_model, metrics=False, access_log=True))
    caplog.set_level(logging.INFO)

    client.get(API.health_path)

    assert [r.getMessage().split(" route=")[1].split()[0] for r in logged_requests(caplog)] == [API.health_path]


def test_methods_and_statuses_outside_the_closed_sets_are_counted_as_other(served_model: Model) -> None:
    metrics = ServiceMetrics(served_model)
    for index in range(100):
        metrics.observe_request("<unmatched>", f"RANDOM{index}", 404, 0.001)
    metrics.observe_request("<unmatched>", "GET", 1000, 0.001)

    assert sorted(metrics.requests) == [("<unmatched>", "GET", "other"), ("<unmatched>", "other", "404")]
    assert metrics.requests[("<unmatched>", "other", "404")] == 100
