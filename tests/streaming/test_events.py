"""Decoding, validating and scoring stream records: the REST API's estimates and checks, every
field passed through, a dead letter with its reason for everything else, order kept."""
import json
import math
from typing import Any, Dict, List

import pytest
from fastapi.testclient import TestClient

from pipeline.artefact.model import Model
from pipeline.serve.api import create_app
from pipeline.settings import API, STREAM
from pipeline.streaming.events import DeadLetter, ScoredEvent, StreamRecord, score_records

SHARD = "shardId-000000000000"
PREDICTION_FIELDS = ["est_hours_to_dispatch", "model_version", "upper_hours_to_dispatch", "extrapolated"]


def record(data: Any, sequence: int = 1) -> StreamRecord:
    """A record of `data`: bytes as they are, anything else as its JSON."""
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return StreamRecord(SHARD, str(sequence), raw, f"key-{sequence}")


def event(order_id: Any = "ORD-1", product_code: Any = "SKU001", orders_placed: Any = 87,
          **more: Any) -> Dict[str, Any]:
    return {"order_id": order_id, "product_code": product_code, "orders_placed": orders_placed, **more}


def one(data: Any, model: Model) -> Any:
    """The one ScoredEvent or DeadLetter a single record becomes."""
    scored, dead = score_records([record(data)], model)
    assert len(scored) + len(dead) == 1
    return (scored + dead)[0]  # type: ignore[operator]


def rest_batch(model: Model, body: bytes) -> Any:
    client = TestClient(create_app(model, metrics=False))
    return client.post(API.predict_batch_path, content=body, headers={"Content-Type": "application/json"})


# --- predictions -----------------------------------------------------------------------------

def test_the_prediction_fields_are_the_rest_apis_to_the_last_bit(trained_model: Model) -> None:
    pairs = [(code, orders) for code in trained_model.product_codes
             for orders in (0, 0.5, 1, 12, 73, 87.25, 150, 320, 321, 5000, 1e9)]
    records = [record(event(f"ORD-{i}", code, orders), i) for i, (code, orders) in enumerate(pairs)]

    scored, dead = score_records(records, trained_model)

    body = json.dumps([{"product_code": code, "orders_placed": orders} for code, orders in pairs]).encode()
    answer = rest_batch(trained_model, body)
    assert answer.status_code == 200 and dead == []
    assert [{name: s.prediction[name] for name in PREDICTION_FIELDS} for s in scored] == answer.json()


def test_the_prediction_equals_the_rest_apis_single_answer(trained_model: Model) -> None:
    scored = one(event(product_code="SKU002", orders_placed=112), trained_model)

    client = TestClient(create_app(trained_model, metrics=False))
    answer = client.post(API.predict_path, json={"product_code": "SKU002", "orders_placed": 112}).json()
    assert {name: scored.prediction[name] for name in PREDICTION_FIELDS} == answer


def test_the_prediction_is_every_event_field_then_the_prediction_fields_then_the_artefact_id(
    trained_model: Model,
) -> None:
    scored = one(event(note="gift wrap", basket={"items": [1, 2]}), trained_model)

    assert list(scored.prediction) == ["order_id", "product_code", "orders_placed", "note", "basket",
                                       *PREDICTION_FIELDS, "artefact_id"]
    assert scored.prediction["note"] == "gift wrap" and scored.prediction["basket"] == {"items": [1, 2]}
    assert scored.prediction["orders_placed"] == 87
    assert scored.prediction["model_version"] == str(trained_model)
    assert scored.prediction["artefact_id"] == trained_model.artefact_id


def test_the_prediction_fields_overwrite_event_fields_of_the_same_name(trained_model: Model) -> None:
    scored = one(event(model_version="mine", artefact_id="mine", extrapolated="maybe"), trained_model)

    assert scored.prediction["model_version"] == str(trained_model)
    assert scored.prediction["artefact_id"] == trained_model.artefact_id
    assert scored.prediction["extrapolated"] is False


def test_the_output_data_is_the_prediction_as_compact_utf8_json(trained_model: Model) -> None:
    scored = one(event(order_id="ORD-é", note="ünïcode"), trained_model)

    assert json.loads(scored.data) == scored.prediction
    assert b", " not in scored.data and "ünïcode".encode() in scored.data


def test_the_order_id_is_kept_for_the_partition_key(trained_model: Model) -> None:
    scored = one(event(order_id="ORD-0000042"), trained_model)

    assert isinstance(scored, ScoredEvent) and scored.order_id == "ORD-0000042"


def test_an_order_id_of_256_characters_is_accepted(trained_model: Model) -> None:
    assert isinstance(one(event(order_id="x" * STREAM.max_partition_key_chars), trained_model), ScoredEvent)


def test_an_empty_batch_scores_nothing(trained_model: Model) -> None:
    assert score_records([], trained_model) == ([], [])


# --- dead letters ----------------------------------------------------------------------------

@pytest.mark.parametrize("data, reason", [
    (b"\xff\xfe{}", "not UTF-8: invalid start byte at byte 0"),
    (b"order 1, SKU001", "not JSON: Expecting value: line 1 column 1 (char 0)"),
    (b"", "not JSON: Expecting value: line 1 column 1 (char 0)"),
    (b'{"order_id": "ORD-1"', "not JSON: Expecting ',' delimiter: line 1 column 21 (char 20)"),
    (b"[1, 2]", "not a JSON object: an array"),
    (b'"ORD-1"', "not a JSON object: a string"),
    (b"null", "not a JSON object: null"),
    (b"[" * 100_000 + b"]" * 100_000, "not JSON: nested too deeply"),
], ids=["not utf-8", "not json", "empty", "cut short", "array", "string", "null", "too deep"])
def test_a_record_that_is_not_a_json_object_is_a_dead_letter(trained_model: Model, data: bytes, reason: str) -> None:
    assert one(data, trained_model) == DeadLetter(record(data), reason)


@pytest.mark.parametrize("fields, reason", [
    ({"orders_placed": -1}, "orders_placed: Input should be greater than or equal to 0"),
    ({"orders_placed": "12"}, "orders_placed: Input should be a valid number"),
    ({"orders_placed": True}, "orders_placed: Input should be a valid number"),
    ({"orders_placed": None}, "orders_placed: Input should be a valid number"),
    ({"orders_placed": math.nan}, "orders_placed: Input should be a finite number"),
    ({"orders_placed": math.inf}, "orders_placed: Input should be a finite number"),
    ({"orders_placed": 1e9 + 1}, "orders_placed: Input should be less than or equal to 1000000000"),
    ({"product_code": "SKU999"}, "product_code: Input should be 'SKU001', 'SKU002', 'SKU003', 'SKU004' or 'SKU005'"),
    ({"product_code": 1}, "product_code: Input should be 'SKU001', 'SKU002', 'SKU003', 'SKU004' or 'SKU005'"),
    ({"order_id": 1}, "order_id: Input should be a valid string"),
    ({"order_id": ""}, "order_id: String should have at least 1 character"),
    ({"order_id": "x" * 257}, "order_id: String should have at most 256 characters"),
], ids=["negative", "string", "boolean", "null", "nan", "infinity", "too large", "unknown product",
        "product not a string", "integer order_id", "empty order_id", "long order_id"])
def test_an_invalid_field_is_a_dead_letter_naming_it(trained_model: Model, fields: Dict[str, Any], reason: str) -> None:
    data = json.dumps(event(**fields)).encode()

    assert one(data, trained_model) == DeadLetter(record(data), reason)


def test_every_missing_field_is_named(trained_model: Model) -> None:
    data = json.dumps({"note": "no fields"}).encode()

    assert one(data, trained_model).reason == (
        "product_code: Field required; orders_placed: Field required; order_id: Field required")


@pytest.mark.parametrize("orders_placed", [-1, "12", True, None, math.nan, math.inf, -math.inf, 1e9 + 1, 1e300, 10**400,
                                           0, 0.0, -0.0, 1, 87.5, 1e9, 10**9, 2**53 + 1])
def test_orders_placed_is_refused_exactly_when_the_rest_api_refuses_it(
    trained_model: Model, orders_placed: Any
) -> None:
    text = json.dumps({"product_code": "SKU001", "orders_placed": orders_placed})

    accepted = rest_batch(trained_model, f"[{text}]".encode()).status_code == 200

    assert isinstance(one(json.dumps(event(orders_placed=orders_placed)).encode(), trained_model), ScoredEvent) \
        is accepted


def test_nan_outside_orders_placed_is_a_dead_letter(trained_model: Model) -> None:
    data = json.dumps(event(discount=math.nan)).encode()

    assert one(data, trained_model).reason == (
        "the event holds NaN or Infinity outside orders_placed, which JSON cannot carry")


def test_a_lone_surrogate_is_a_dead_letter(trained_model: Model) -> None:
    data = b'{"order_id": "ORD-1", "product_code": "SKU001", "orders_placed": 1, "note": "\\ud800"}'

    assert one(data, trained_model).reason == (
        "a string of the event holds a lone surrogate (\\ud800-\\udfff), which UTF-8 cannot carry")


def test_a_prediction_over_kinesis_record_limit_is_a_dead_letter(trained_model: Model) -> None:
    padding = "x" * (STREAM.max_record_bytes - 100)
    data = json.dumps(event(padding=padding)).encode()

    reason = one(data, trained_model).reason

    assert reason.startswith("the prediction would be 1,048,") and reason.endswith(
        "bytes with its partition key, over Kinesis' record limit of 1,048,576 bytes")


def test_bad_records_never_affect_the_others_and_order_is_kept(trained_model: Model) -> None:
    datas: List[Any] = [event("A", orders_placed=1), b"junk", event("B", orders_placed=-1), event("C", orders_placed=2),
                        event("D", product_code="SKU999"), event("E", orders_placed=3)]
    records = [record(data, i) for i, data in enumerate(datas)]

    scored, dead = score_records(records, trained_model)
    alone = [one(event(order_id, orders_placed=orders), trained_model) for order_id, orders in (("A", 1), ("C", 2),
                                                                                                ("E", 3))]

    assert [s.order_id for s in scored] == ["A", "C", "E"]
    assert [s.record for s in scored] == [records[0], records[3], records[5]]
    assert [s.prediction for s in scored] == [a.prediction for a in alone]
    assert [d.record for d in dead] == [records[1], records[2], records[4]]
