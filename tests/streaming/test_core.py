"""A batch through the streaming core, on real streams and a real bucket over HTTP: predictions
out equal to the REST API's, dead letters with their reasons and bytes, unwritten records
reported, and nothing put when the dead letters cannot be written."""
import base64
import json
from typing import Any, Dict, List

import boto3
import pytest
from fastapi.testclient import TestClient

from pipeline.artefact.model import Model
from pipeline.serve.api import create_app
from pipeline.settings import API, LAYOUT
from pipeline.storage.client import NoSuchBucketError
from pipeline.streaming.core import BatchResult, process_batch
from pipeline.streaming.events import StreamRecord
from pipeline.streaming.output import DeadLetterStore, StreamError
from tests.helpers import AwsFaultProxy, read_stream

SHARD = "shardId-000000000000"
PREDICTION_FIELDS = ("est_hours_to_dispatch", "model_version", "upper_hours_to_dispatch", "extrapolated")


def records(events: List[Any]) -> List[StreamRecord]:
    return [StreamRecord(SHARD, str(100 + i), e if isinstance(e, bytes) else json.dumps(e).encode(), f"in-{i}")
            for i, e in enumerate(events)]


def order(order_id: str, product_code: str = "SKU001", orders_placed: Any = 10) -> Dict[str, Any]:
    return {"order_id": order_id, "product_code": product_code, "orders_placed": orders_placed}


MIXED = [order("A", "SKU001", 12), b"not json", order("B", "SKU003", 150.5), order("C", orders_placed=-4),
         order("D", "SKU005", 0)]


def test_a_batch_writes_its_predictions_and_its_dead_letters(
    trained_model: Model, kinesis: Any, new_stream: Any, s3: Any, bucket: str
) -> None:
    stream = new_stream(shards=2)
    batch = records(MIXED)

    result = process_batch(batch, trained_model, kinesis, stream, DeadLetterStore(bucket, s3, "test"))

    assert result == BatchResult(written=3, dead_lettered=2, unwritten=[])
    assert sorted(r["PartitionKey"] for r in read_stream(kinesis, stream)) == ["A", "B", "D"]
    key = f"{LAYOUT.stream_dead_letters_prefix}test/{SHARD}/101.jsonl"
    lines = [json.loads(line) for line in s3.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines()]
    assert [(line["sequence_number"], line["reason"], base64.b64decode(line["data_base64"])) for line in lines] == [
        ("101", "not JSON: Expecting value: line 1 column 1 (char 0)", b"not json"),
        ("103", "orders_placed: Input should be greater than or equal to 0", batch[3].data),
    ]


def test_the_predictions_on_the_stream_are_the_rest_apis(
    trained_model: Model, kinesis: Any, new_stream: Any, s3: Any, bucket: str
) -> None:
    stream = new_stream()
    valid = [e for e in MIXED if isinstance(e, dict) and e["orders_placed"] >= 0]

    process_batch(records(MIXED), trained_model, kinesis, stream, DeadLetterStore(bucket, s3, "test"))

    client = TestClient(create_app(trained_model, metrics=False))
    answer = client.post(API.predict_batch_path, json=[
        {"product_code": e["product_code"], "orders_placed": e["orders_placed"]} for e in valid]).json()
    out = [json.loads(r["Data"]) for r in read_stream(kinesis, stream)]
    assert out == [{**e, **rest, "artefact_id": trained_model.artefact_id} for e, rest in zip(valid, answer)]
    assert [list(o)[3:] for o in out] == [[*PREDICTION_FIELDS, "artefact_id"]] * len(valid)


def test_records_whose_prediction_cannot_be_written_are_reported_in_order(
    trained_model: Model, kinesis: Any, aws_proxy: AwsFaultProxy, new_stream: Any, s3: Any, bucket: str,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("time.sleep", lambda seconds: None)  # the retries' backoff
    stream = new_stream()
    aws_proxy.fail("D")
    aws_proxy.fail("A")
    batch = records(MIXED)

    result = process_batch(batch, trained_model, boto3.client("kinesis", endpoint_url=aws_proxy.endpoint),
                           stream, DeadLetterStore(bucket, s3, "test"))

    assert result == BatchResult(written=1, dead_lettered=2, unwritten=[batch[0], batch[4]])
    assert [r["PartitionKey"] for r in read_stream(kinesis, stream)] == ["B"]


def test_when_the_dead_letters_cannot_be_written_nothing_is_put(
    trained_model: Model, kinesis: Any, new_stream: Any, s3: Any
) -> None:
    stream = new_stream()

    with pytest.raises(NoSuchBucketError):
        process_batch(records(MIXED), trained_model, kinesis, stream, DeadLetterStore("no-such-bucket", s3, "test"))

    assert read_stream(kinesis, stream) == []


def test_a_batch_of_valid_events_writes_no_dead_letter_object(
    trained_model: Model, kinesis: Any, new_stream: Any, s3: Any, bucket: str
) -> None:
    result = process_batch(records([order("A"), order("B")]), trained_model, kinesis, new_stream(),
                           DeadLetterStore(bucket, s3, "test"))

    assert result == BatchResult(2, 0, [])
    assert s3.list_objects_v2(Bucket=bucket, Prefix=LAYOUT.stream_dead_letters_prefix).get("KeyCount") == 0


def test_a_missing_output_stream_raises_after_the_dead_letters_are_written(
    trained_model: Model, kinesis: Any, s3: Any, bucket: str
) -> None:
    with pytest.raises(StreamError, match="stream 'no-such-stream' does not exist"):
        process_batch(records(MIXED), trained_model, kinesis, "no-such-stream", DeadLetterStore(bucket, s3, "test"))

    assert s3.list_objects_v2(Bucket=bucket, Prefix=LAYOUT.stream_dead_letters_prefix).get("KeyCount") == 1
