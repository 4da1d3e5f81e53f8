"""The service's API through `TestClient`, on the app production runs, with a real trained model.

The model is the one the real train stage produced for the session (see conftest), stored in
and loaded back from the local S3 server, exactly as the service gets it at start-up.
"""
import json
from datetime import datetime, timezone
from typing import Any, Dict, List

import numpy as np
import pytest
from fastapi.testclient import TestClient

from pipeline.artefact.model import Model
from pipeline.local.synthetic import generate_orders
from pipeline.serve.api import build_request_model, create_app
from pipeline.settings import API, ARTEFACT, SERVE
from pipeline.storage.datasets import Dataset
from pipeline.train import steps, tuning


def estimator_predictions(model: Model, product_code: str, orders_placed: List[float]) -> np.ndarray:
    """What is served for one product code, computed here from the artefact's parts: the
    calibration's step function (the value after the last breakpoint below each point), or the
    wrapped scikit-learn estimator's own prediction for a model without a calibration."""
    if model.calibration is not None:
        steps = model.calibration.per_product[product_code]
        index = [sum(1 for threshold in steps.thresholds if threshold < value) for value in orders_placed]
        return np.array([steps.values[i] for i in index], dtype=np.float64)
    code_index = model.encoding.codes.index(product_code)
    features = np.column_stack([orders_placed, np.full(len(orders_placed), float(code_index))])
    return np.asarray(model.estimator.predict(features), dtype=np.float64)


def orders_to_check(model: Model) -> List[float]:
    """Whole orders over the trained range and beyond, and each split threshold and calibration
    breakpoint, and the value just above each.

    The thresholds are where an exact tree walk and scikit-learn could part ways, the
    breakpoints where the binary search and numpy's could.
    """
    tree = model.estimator.tree_
    thresholds = tree.threshold[tree.feature == 0]
    if model.calibration is not None:
        thresholds = np.concatenate([thresholds] + [np.asarray(steps.thresholds)
                                                    for steps in model.calibration.per_product.values()])
    values = np.concatenate([
        np.arange(0, model.monotonicity.max_orders_placed + 30),
        thresholds,
        np.nextafter(thresholds, np.inf),
        [0.25, 72.5, 1e4, 123456.789, ARTEFACT.max_accepted_orders_placed],
    ])
    return sorted({float(v) for v in values if 0 <= v <= ARTEFACT.max_accepted_orders_placed})


def post_json(client: TestClient, path: str, body: Any) -> Any:
    return client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})


def post_raw(client: TestClient, path: str, text: str) -> Any:
    return client.post(path, content=text, headers={"Content-Type": "application/json"})


# --- POST /api/v0.1/time_to_dispatch ----------------------------------------------------------

def test_prediction_answers_the_estimate_and_the_model_version(client: TestClient, served_model: Model) -> None:
    response = post_json(client, API.predict_path, {"product_code": "SKU001", "orders_placed": 112})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    estimate = estimator_predictions(served_model, "SKU001", [112])[0]
    assert served_model.upper_bound is not None
    assert response.json() == {
        "est_hours_to_dispatch": pytest.approx(estimate, abs=1e-9),
        "model_version": str(served_model),
        "upper_hours_to_dispatch": pytest.approx(estimate + served_model.upper_bound.margin_hours, abs=1e-9),
        "extrapolated": False,
    }
    assert list(response.json()) == ["est_hours_to_dispatch", "model_version", "upper_hours_to_dispatch",
                                     "extrapolated"]


def test_a_request_above_the_trained_range_is_flagged_extrapolated_and_counted(
    client: TestClient, served_model: Model
) -> None:
    highest = served_model.trained_range("SKU004").highest
    inside = post_json(client, API.predict_path, {"product_code": "SKU004", "orders_placed": highest}).json()
    above = post_json(client, API.predict_path, {"product_code": "SKU004", "orders_placed": highest + 100}).json()
    batch = post_json(client, API.predict_batch_path, [{"product_code": "SKU004", "orders_placed": highest + 1},
                                                       {"product_code": "SKU001", "orders_placed": 10}]).json()

    assert inside["extrapolated"] is False and above["extrapolated"] is True
    assert above["est_hours_to_dispatch"] == inside["est_hours_to_dispatch"]  # not invented beyond the data
    assert [item["extrapolated"] for item in batch] == [True, False]
    metrics = client.get(API.metrics_path).text
    assert 'time_to_dispatch_extrapolated_predictions_total{product_code="SKU004"} 2.0' in metrics
    assert 'time_to_dispatch_extrapolated_predictions_total{product_code="SKU001"} 0.0' in metrics


def test_model_version_names_the_artefact_hash_dataset_and_commit(client: TestClient, served_model: Model) -> None:
    answer = post_json(client, API.predict_path, {"product_code": "SKU003", "orders_placed": 40})
    version = answer.json()["model_version"]

    assert served_model.artefact_id in version
    assert f"sha256={served_model.model_hash[:12]}" in version
    assert f"data={served_model.dataset.key}@{served_model.dataset.etag}" in version
    assert f"git={served_model.git_commit[:12]}" in version


def test_predictions_equal_the_estimators_for_every_product_code_and_many_orders(
    client: TestClient, served_model: Model
) -> None:
    orders = orders_to_check(served_model)
    mismatches = []
    for code in served_model.product_codes:
        expected = estimator_predictions(served_model, code, orders)
        for value, want in zip(orders, expected):
            got = post_json(client, API.predict_path, {"product_code": code, "orders_placed": value}).json()
            if abs(got["est_hours_to_dispatch"] - want) > 1e-9:
                mismatches.append((code, value, got["est_hours_to_dispatch"], want))

    assert len(orders) > 300
    assert mismatches == []


def test_fractional_orders_placed_is_accepted(client: TestClient, served_model: Model) -> None:
    response = post_json(client, API.predict_path, {"product_code": "SKU002", "orders_placed": 112.5})

    assert response.status_code == 200
    assert response.json()["est_hours_to_dispatch"] == pytest.approx(
        estimator_predictions(served_model, "SKU002", [112.5])[0], abs=1e-9)


@pytest.mark.parametrize(
    "body, field, error_type",
    [
        ({"orders_placed": 112}, "product_code", "missing"),
        ({"product_code": "SKU001"}, "orders_placed", "missing"),
        ({"product_code": "SKU999", "orders_placed": 112}, "product_code", "literal_error"),
        ({"product_code": "sku001", "orders_placed": 112}, "product_code", "literal_error"),
        ({"product_code": 1, "orders_placed": 112}, "product_code", "literal_error"),
        ({"product_code": "SKU001", "orders_placed": -1}, "orders_placed", "greater_than_equal"),
        ({"product_code": "SKU001", "orders_placed": -0.001}, "orders_placed", "greater_than_equal"),
        ({"product_code": "SKU001", "orders_placed": 1e39}, "orders_placed", "less_than_equal"),
        ({"product_code": "SKU001", "orders_placed": ARTEFACT.max_accepted_orders_placed * 1.01}, "orders_placed",
         "less_than_equal"),
        ({"product_code": "SKU001", "orders_placed": "112"}, "orders_placed", "float_type"),
        ({"product_code": "SKU001", "orders_placed": True}, "orders_placed", "float_type"),
        ({"product_code": "SKU001", "orders_placed": None}, "orders_placed", "float_type"),
        ({"product_code": "SKU001", "orders_placed": 112, "customer": "ACME"}, "customer", "extra_forbidden"),
    ],
)
def test_invalid_request_is_a_422_naming_the_field(
    client: TestClient, body: Dict[str, Any], field: str, error_type: str
) -> None:
    response = post_json(client, API.predict_path, body)

    assert response.status_code == 422
    assert [(e["loc"], e["type"]) for e in response.json()["detail"]] == [(["body", field], error_type)]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_orders_placed_is_a_422_with_a_valid_json_body(client: TestClient, literal: str) -> None:
    # Python's JSON parser accepts these literals, so they reach validation.
    response = post_raw(client, API.predict_path, f'{{"product_code": "SKU001", "orders_placed": {literal}}}')

    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "type": "finite_number",
            "loc": ["body", "orders_placed"],
            "msg": "Input should be a finite number",
            "input": literal,
        }
    ]


def test_body_that_is_not_json_is_a_422(client: TestClient) -> None:
    response = post_raw(client, API.predict_path, '{"product_code": "SKU001", "orders_placed": ')

    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


# --- POST /api/v0.1/time_to_dispatch/batch ----------------------------------------------------

def test_batch_answers_each_request_in_order(client: TestClient, served_model: Model) -> None:
    rng = np.random.default_rng(7)
    codes = list(served_model.product_codes)
    requests = [
        {"product_code": codes[int(i)], "orders_placed": float(o)}
        for i, o in zip(rng.integers(0, len(codes), 200), rng.uniform(0, 330, 200))
    ]

    response = post_json(client, API.predict_batch_path, requests)

    assert response.status_code == 200
    expected = [estimator_predictions(served_model, r["product_code"], [r["orders_placed"]])[0] for r in requests]
    answers = response.json()
    assert [a["est_hours_to_dispatch"] for a in answers] == pytest.approx(expected, abs=1e-9)
    assert {a["model_version"] for a in answers} == {str(served_model)}


def test_batch_equals_the_single_endpoint(client: TestClient, served_model: Model) -> None:
    requests = [{"product_code": code, "orders_placed": o}
                for code in served_model.product_codes for o in (0, 99.5, 100, 150, 320)]

    batch = post_json(client, API.predict_batch_path, requests).json()

    assert batch == [post_json(client, API.predict_path, r).json() for r in requests]


def test_batch_of_the_maximum_size_is_answered(client: TestClient) -> None:
    requests = [{"product_code": "SKU004", "orders_placed": i % 300} for i in range(SERVE.max_batch_size)]

    response = post_json(client, API.predict_batch_path, requests)

    assert response.status_code == 200
    assert len(response.json()) == SERVE.max_batch_size


def test_batch_over_the_maximum_size_is_a_422(client: TestClient) -> None:
    requests = [{"product_code": "SKU004", "orders_placed": 1}] * (SERVE.max_batch_size + 1)

    response = post_json(client, API.predict_batch_path, requests)

    assert response.status_code == 422
    assert [(e["loc"], e["type"]) for e in response.json()["detail"]] == [(["body"], "too_long")]


def test_empty_batch_is_a_422(client: TestClient) -> None:
    response = post_json(client, API.predict_batch_path, [])

    assert response.status_code == 422
    assert [(e["loc"], e["type"]) for e in response.json()["detail"]] == [(["body"], "too_short")]


def test_batch_that_is_not_a_list_is_a_422(client: TestClient) -> None:
    response = post_json(client, API.predict_batch_path, {"product_code": "SKU001", "orders_placed": 1})

    assert response.status_code == 422
    assert [(e["loc"], e["type"]) for e in response.json()["detail"]] == [(["body"], "list_type")]


def test_invalid_item_in_a_batch_is_a_422_naming_its_index_and_field(client: TestClient) -> None:
    requests = [
        {"product_code": "SKU001", "orders_placed": 1},
        {"product_code": "SKU001", "orders_placed": -5},
        {"product_code": "SKU404", "orders_placed": 1},
    ]

    response = post_json(client, API.predict_batch_path, requests)

    assert response.status_code == 422
    assert [(e["loc"], e["type"]) for e in response.json()["detail"]] == [
        (["body", 1, "orders_placed"], "greater_than_equal"),
        (["body", 2, "product_code"], "literal_error"),
    ]


# --- the rest of the API ------------------------------------------------------------------------

def test_model_endpoint_returns_the_lineage(client: TestClient, served_model: Model) -> None:
    lineage = client.get(API.model_path).json()

    assert lineage["model_version"] == str(served_model)
    assert lineage["artefact_key"] == served_model.artefact_key
    assert lineage["artefact_key"].startswith("models/time_to_dispatch_")
    assert (lineage["dataset"]["key"], lineage["dataset"]["etag"]) == (served_model.dataset.key,
                                                                       served_model.dataset.etag)
    assert lineage["metrics"]["r_squared"] == served_model.metrics.r_squared
    assert lineage["hyperparameters"] == served_model.hyperparameters
    assert lineage["created_at"] == served_model.created_at.isoformat()
    assert lineage["git_commit"] == served_model.git_commit
    assert lineage["product_codes"] == list(served_model.product_codes)
    assert lineage["report_key"] == served_model.report_key


def test_model_report_serves_the_report_html_it_was_given(served_model: Model) -> None:
    page = b"<!DOCTYPE html><html><body><h1>Model report</h1></body></html>"

    response = TestClient(create_app(served_model, page)).get(API.model_report_path)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.content == page


def test_model_report_is_served_with_a_content_security_policy_that_runs_no_script(served_model: Model) -> None:
    # The report is written by the train stage and kept in the bucket: whatever it holds, the
    # browser shows it as a page of text, inline style and embedded images, and runs nothing.
    page = b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>"

    response = TestClient(create_app(served_model, page)).get(API.model_report_path)

    policy = {part.split()[0]: part.split()[1:] for part in response.headers["content-security-policy"].split(";")
              if part.strip()}
    assert policy["default-src"] == ["'none'"] and "script-src" not in policy
    assert policy["img-src"] == ["data:"] and policy["style-src"] == ["'unsafe-inline'"]
    assert response.headers["x-content-type-options"] == "nosniff"


def test_model_report_of_a_model_made_before_reports_is_a_404_naming_the_model(served_model: Model) -> None:
    served_model.report_key = None

    response = TestClient(create_app(served_model)).get(API.model_report_path)

    assert response.status_code == 404
    assert response.json() == {
        "detail": f"model {served_model.artefact_id} has no report (made before reports existed)"}


def test_health_is_ok(client: TestClient) -> None:
    response = client.get(API.health_path)

    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_ready_names_the_loaded_model(client: TestClient, served_model: Model) -> None:
    response = client.get(API.ready_path)

    assert (response.status_code, response.json()) == (200, {"status": "ready", "model_version": str(served_model)})


def test_openapi_shows_the_models_product_codes_as_an_enum(client: TestClient, served_model: Model) -> None:
    schema = client.get("/openapi.json").json()

    request_schema = schema["components"]["schemas"]["PredictionRequest"]
    assert request_schema["properties"]["product_code"]["enum"] == list(served_model.product_codes)
    assert request_schema["properties"]["orders_placed"]["minimum"] == 0
    assert request_schema["properties"]["orders_placed"]["maximum"] == ARTEFACT.max_accepted_orders_placed
    assert request_schema["additionalProperties"] is False


def test_openapi_documents_every_endpoint(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]

    assert set(paths) == {
        API.predict_path, API.predict_batch_path, API.model_path, API.model_report_path, API.health_path,
        API.ready_path,
    }
    batch_body = paths[API.predict_batch_path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert (batch_body["minItems"], batch_body["maxItems"]) == (1, SERVE.max_batch_size)


def test_docs_page_is_served(client: TestClient) -> None:
    response = client.get(API.docs_path)

    assert response.status_code == 200
    assert "/openapi.json" in response.text


def test_service_accepts_exactly_the_codes_its_model_was_trained_on() -> None:
    slopes = {"SKU001": 0.075, "SKU002": 0.1, "SKU006": 0.2}
    data = steps.prepare_data(generate_orders(600, seed=11, product_slopes=slopes))
    search = tuning.tune_hyperparameters(data.X_train, data.y_train, {"max_depth": [6]})
    dataset = Dataset(generate_orders(1), "bucket", "datasets/time_to_dispatch_2026-10-02T23:00:00.csv",
                      datetime(2026, 10, 2, 23, tzinfo=timezone.utc), "etag", None)
    metrics = steps.evaluate(search.estimator, data)
    model = steps.build_model(search.estimator, search.best_params, data, metrics, dataset)
    client = TestClient(create_app(model))

    new_code = post_json(client, API.predict_path, {"product_code": "SKU006", "orders_placed": 50})
    dropped_code = post_json(client, API.predict_path, {"product_code": "SKU003", "orders_placed": 50})

    assert new_code.status_code == 200
    assert new_code.json()["est_hours_to_dispatch"] == pytest.approx(
        estimator_predictions(model, "SKU006", [50])[0], abs=1e-9)
    assert dropped_code.status_code == 422


def test_request_model_needs_product_codes() -> None:
    with pytest.raises(ValueError, match="at least one product code"):
        build_request_model([])


# --- hostile inputs -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text",
    [
        '{"product_code": "\\ud800", "orders_placed": 1}',
        '{"product_code": "SKU001", "orders_placed": "\\udfff"}',
        '{"product_code": "SKU001", "orders_placed": 1, "\\ud800": 1}',
    ],
    ids=["product_code", "orders_placed", "field-name"],
)
def test_a_lone_surrogate_in_any_string_is_a_422_in_the_documented_shape(client: TestClient, text: str) -> None:
    response = post_raw(client, API.predict_path, text)

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert set(error) >= {"type", "loc", "msg", "input"}
    assert "\\ud" in response.content.decode("utf-8")  # echoed escaped, as valid UTF-8


def test_a_huge_invalid_value_is_echoed_as_a_short_prefix_with_its_length(client: TestClient) -> None:
    response = post_json(client, API.predict_path, {"product_code": "X" * 500_000, "orders_placed": 1})

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "product_code"]
    assert error["input"] == "X" * 100 + "... (500000 characters)"
    assert len(response.content) < 2000


def test_a_body_missing_a_field_echoes_the_object_cut_short(client: TestClient) -> None:
    response = post_json(client, API.predict_path, {"product_code": "SKU001", "note": "n" * 10_000})

    assert response.status_code == 422
    assert len(response.content) < 2000
    assert all(len(json.dumps(error["input"])) < 200 for error in response.json()["detail"])


@pytest.mark.parametrize("path", [API.predict_path, API.predict_batch_path])
def test_a_body_that_is_not_utf_8_in_another_content_type_is_a_422_echoing_it_escaped(
    client: TestClient, path: str
) -> None:
    body = '{"product_code": "SKU001"}'.encode("utf-16")

    response = client.post(path, content=body, headers={"Content-Type": "text/plain"})

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["input"] == body.decode("utf-8", "backslashreplace")


def test_deeply_nested_json_is_a_client_error(client: TestClient) -> None:
    response = post_raw(client, API.predict_batch_path, "[" * 100_000 + "]" * 100_000)

    assert response.status_code in (400, 422)


def test_openapi_documents_the_400_408_and_413_of_every_post_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]

    for path in (API.predict_path, API.predict_batch_path):
        assert {"200", "400", "408", "413", "422"} <= set(paths[path]["post"]["responses"]), path


# --- bounded 422s: a body cannot make the answer, or the work, grow with it ----------------------

def test_a_body_of_90000_unknown_fields_is_a_short_422_listing_a_few_errors_and_counting_the_rest(
    client: TestClient
) -> None:
    text = "{" + ",".join(f'"k{i}":0' for i in range(90_000)) + "}"
    assert len(text) < SERVE.max_body_bytes

    response = post_raw(client, API.predict_path, text)

    assert response.status_code == 422
    assert len(response.content) < 5_000
    detail = response.json()["detail"]
    assert len(detail) <= SERVE.max_errors_reported + 1
    assert detail[0]["type"] == "too_many_fields"
    assert "90000 fields" in detail[0]["msg"]


def test_a_batch_of_many_invalid_items_lists_the_first_errors_and_counts_the_rest(client: TestClient) -> None:
    requests = [{"product_code": "SKU404", "orders_placed": -1}] * SERVE.max_batch_size

    response = post_json(client, API.predict_batch_path, requests)

    assert response.status_code == 422
    assert len(response.content) < 20_000
    detail = response.json()["detail"]
    assert len(detail) == SERVE.max_errors_reported + 1
    assert [e["loc"] for e in detail[:2]] == [["body", 0, "product_code"], ["body", 0, "orders_placed"]]
    assert detail[-1]["type"] == "too_many_errors"
    assert detail[-1]["msg"] == (f"{2 * SERVE.max_batch_size - SERVE.max_errors_reported} more error(s) not "
                                 f"listed; the first {SERVE.max_errors_reported} are")


def test_an_unknown_code_names_a_few_known_codes_and_counts_the_rest() -> None:
    slopes = {f"SKU{i:03d}": 0.05 + i / 100 for i in range(1, 9)}
    data = steps.prepare_data(generate_orders(800, seed=12, product_slopes=slopes))
    search = tuning.tune_hyperparameters(data.X_train, data.y_train, {"max_depth": [6]})
    dataset = Dataset(generate_orders(1), "bucket", "datasets/time_to_dispatch_2026-10-02T23:00:00.csv",
                      datetime(2026, 10, 2, 23, tzinfo=timezone.utc), "etag", None)
    model = steps.build_model(search.estimator, search.best_params, data, steps.evaluate(search.estimator, data),
                              dataset)
    client = TestClient(create_app(model))

    response = post_json(client, API.predict_path, {"product_code": "SKU404", "orders_placed": 1})

    assert response.status_code == 422
    [error] = response.json()["detail"]
    expected = "'SKU001', 'SKU002', 'SKU003', 'SKU004', 'SKU005' or one of 3 more"
    assert (error["type"], error["msg"]) == ("literal_error", f"Input should be {expected}")
    assert error["ctx"] == {"expected": expected}


def test_a_model_with_a_huge_code_answers_an_unknown_code_with_a_short_422(served_model: Model) -> None:
    # A model made before product codes had a length limit may still hold one.
    codes = ("X" * 130_000, *served_model.encoding.codes[1:])
    served_model.encoding = type(served_model.encoding)(codes=codes)
    client = TestClient(create_app(served_model))

    response = post_json(client, API.predict_batch_path, [{"product_code": "SKU404", "orders_placed": 1}] * 4)

    assert response.status_code == 422
    assert len(response.content) < 5_000
    assert "... (130000 characters)" in response.json()["detail"][0]["msg"]
