"""The Lambda handler with events shaped as AWS sends them (read from a real input stream on the
local AWS server, base64 data, eventID `<shard>:<seq>`), a signed model in a real bucket, and
a real output stream: batch failures reported so that a retry resumes at the first record not
written, dead letters never reported, the model loaded once per container."""
import json
import logging
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from pipeline.artefact.model import Model
from pipeline.local.local_s3 import create_bucket
from pipeline.model_registry.live_model import live_model_object
from pipeline.settings import ENVIRONMENT, LAYOUT, LOCAL, STREAM
from pipeline.storage.layout import NoObjectsError
from pipeline.streaming import lambda_handler
from pipeline.streaming.events import StreamRecord
from tests.helpers import (
    LAMBDA_REQUIREMENTS,
    AwsFaultProxy,
    lambda_kinesis_event,
    lambda_package,
    persist_model_copy,
    read_stream,
)

SHARD = "shardId-000000000000"
CONTEXT = SimpleNamespace(function_name="time-to-dispatch-stream", aws_request_id="c6af9ac6-7b61-11e6-9a41",
                          memory_limit_in_mb=1024)


def order(order_id: str, orders_placed: Any = 10, product_code: str = "SKU001") -> bytes:
    return json.dumps({"order_id": order_id, "product_code": product_code, "orders_placed": orders_placed}).encode()


@pytest.fixture(autouse=True)
def root_logger() -> Iterator[None]:
    """The handler sets the root logger's level and its handlers' format on a container's first
    invocation: put them back."""
    root = logging.getLogger()
    level, formats = root.level, [(handler, handler.formatter) for handler in root.handlers]
    yield
    root.setLevel(level)
    for handler, formatter in formats:
        handler.setFormatter(formatter)


@pytest.fixture
def streams(bucket_with_model: str, new_stream: Any, monkeypatch: pytest.MonkeyPatch) -> Tuple[str, str]:
    """(input stream, output stream), a function environment naming the output stream and the
    bucket with the model, and a container that has loaded nothing yet."""
    input_stream, output_stream = new_stream(), new_stream()
    monkeypatch.setenv(STREAM.lambda_bucket_variable, bucket_with_model)
    monkeypatch.setenv(STREAM.lambda_output_stream_variable, output_stream)
    monkeypatch.setattr(lambda_handler, "_loaded", None)
    return input_stream, output_stream


def put_events(kinesis: Any, stream: str, datas: List[bytes]) -> List[str]:
    """Put the events on the (one-shard) input stream; their sequence numbers."""
    answer = kinesis.put_records(StreamName=stream, Records=[
        {"Data": data, "PartitionKey": f"in-{i}"} for i, data in enumerate(datas)])
    return [entry["SequenceNumber"] for entry in answer["Records"]]


def failures(response: Dict[str, Any]) -> List[str]:
    return [item["itemIdentifier"] for item in response["batchItemFailures"]]


def outputs(kinesis: Any, stream: str) -> List[Dict[str, Any]]:
    return [json.loads(record["Data"]) for record in read_stream(kinesis, stream)]


def test_a_good_batch_reports_no_failure_and_every_prediction_is_on_the_output_stream(
    streams: Tuple[str, str], kinesis: Any, trained_model: Model
) -> None:
    input_stream, output_stream = streams
    put_events(kinesis, input_stream, [order(f"ORD-{i}", 10 * i) for i in range(5)])

    response = lambda_handler.handler(lambda_kinesis_event(kinesis, input_stream, SHARD), CONTEXT)

    assert response == {"batchItemFailures": []}
    predicted = outputs(kinesis, output_stream)
    assert [p["order_id"] for p in predicted] == [f"ORD-{i}" for i in range(5)]
    expected = trained_model.estimate(["SKU001"] * 5, [10.0 * i for i in range(5)]).est_hours_to_dispatch.tolist()
    assert [p["est_hours_to_dispatch"] for p in predicted] == expected
    assert {p["artefact_id"] for p in predicted} == {trained_model.artefact_id}


def test_malformed_records_are_dead_lettered_and_not_reported(
    streams: Tuple[str, str], kinesis: Any, s3: Any, bucket_with_model: str
) -> None:
    input_stream, output_stream = streams
    sequences = put_events(kinesis, input_stream, [order("ORD-0"), b"\x00garbage", order("ORD-2", -1), order("ORD-3")])

    response = lambda_handler.handler(lambda_kinesis_event(kinesis, input_stream, SHARD), CONTEXT)

    assert response == {"batchItemFailures": []}
    assert [p["order_id"] for p in outputs(kinesis, output_stream)] == ["ORD-0", "ORD-3"]
    key = f"{LAYOUT.stream_dead_letters_prefix}{STREAM.lambda_source}/{SHARD}/{sequences[1]}.jsonl"
    lines = [json.loads(line) for line in s3.get_object(Bucket=bucket_with_model, Key=key)["Body"].read().splitlines()]
    assert [(line["sequence_number"], line["partition_key"], line["reason"]) for line in lines] == [
        (sequences[1], "in-1", "not JSON: Expecting value: line 1 column 1 (char 0)"),
        (sequences[2], "in-2", "orders_placed: Input should be greater than or equal to 0"),
    ]


def test_a_partly_failed_write_reports_the_records_not_written_and_the_retry_resumes_at_the_first(
    streams: Tuple[str, str], kinesis: Any, aws_proxy: AwsFaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    input_stream, output_stream = streams
    sequences = put_events(kinesis, input_stream, [order(f"ORD-{i}") for i in range(6)])
    monkeypatch.setenv(ENVIRONMENT.aws_endpoint_url, aws_proxy.endpoint)
    monkeypatch.setattr("time.sleep", lambda seconds: None)  # the retries' backoff
    aws_proxy.fail("ORD-4")
    aws_proxy.fail("ORD-2")

    first = lambda_handler.handler(lambda_kinesis_event(kinesis, input_stream, SHARD), CONTEXT)

    assert failures(first) == [sequences[2], sequences[4]]
    assert sorted(p["order_id"] for p in outputs(kinesis, output_stream)) == ["ORD-0", "ORD-1", "ORD-3", "ORD-5"]
    # Lambda sends the batch again from the lowest sequence number reported.
    aws_proxy.failures.clear()
    resumed = min(failures(first), key=int)
    retry = lambda_handler.handler(lambda_kinesis_event(kinesis, input_stream, SHARD, starting_at=resumed), CONTEXT)

    assert failures(retry) == []
    written = [p["order_id"] for p in outputs(kinesis, output_stream)]
    assert sorted(set(written)) == [f"ORD-{i}" for i in range(6)]
    assert sorted(written) == ["ORD-0", "ORD-1", "ORD-2", "ORD-3", "ORD-3", "ORD-4", "ORD-5", "ORD-5"]


def test_when_the_dead_letters_cannot_be_written_the_whole_batch_is_reported(
    streams: Tuple[str, str], kinesis: Any, aws_proxy: AwsFaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    input_stream, output_stream = streams
    sequences = put_events(kinesis, input_stream, [order("ORD-0"), b"junk", order("ORD-2")])
    monkeypatch.setenv(ENVIRONMENT.aws_endpoint_url, aws_proxy.endpoint)
    aws_proxy.deny_s3_puts_under = LAYOUT.stream_dead_letters_prefix

    response = lambda_handler.handler(lambda_kinesis_event(kinesis, input_stream, SHARD), CONTEXT)

    assert failures(response) == sequences
    assert outputs(kinesis, output_stream) == []


def test_the_model_is_loaded_once_per_container(
    streams: Tuple[str, str], kinesis: Any, bucket_with_model: str, trained_model: Model
) -> None:
    input_stream, output_stream = streams
    first = put_events(kinesis, input_stream, [order("ORD-0")])
    lambda_handler.handler(lambda_kinesis_event(kinesis, input_stream, SHARD), CONTEXT)
    loaded = lambda_handler._loaded
    newer = persist_model_copy(bucket_with_model, trained_model, trained_model.created_at + timedelta(hours=1),
                               "0newer00")
    assert live_model_object(bucket_with_model).key == newer.artefact_key
    second = put_events(kinesis, input_stream, [order("ORD-1")])

    lambda_handler.handler(lambda_kinesis_event(kinesis, input_stream, SHARD, starting_at=second[0]), CONTEXT)

    assert first != second and lambda_handler._loaded is loaded
    assert [p["artefact_id"] for p in outputs(kinesis, output_stream)] == [trained_model.artefact_id] * 2


def test_nothing_is_loaded_at_import() -> None:
    import importlib

    module = importlib.reload(lambda_handler)

    assert module._loaded is None


def test_a_missing_bucket_variable_is_a_clear_error(
    streams: Tuple[str, str], kinesis: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(STREAM.lambda_bucket_variable)

    with pytest.raises(lambda_handler.LambdaConfigurationError,
                       match=f"the environment variable {STREAM.lambda_bucket_variable} is not set: it names the "
                             "bucket whose live model it serves"):
        lambda_handler.handler(lambda_kinesis_event(kinesis, streams[0], SHARD), CONTEXT)
    assert [r.levelno for r in caplog.records] == [logging.ERROR]


def test_a_missing_output_stream_variable_is_a_clear_error(
    streams: Tuple[str, str], kinesis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(STREAM.lambda_output_stream_variable)

    with pytest.raises(lambda_handler.LambdaConfigurationError,
                       match=f"{STREAM.lambda_output_stream_variable} is not set: it names the stream it writes"):
        lambda_handler.handler(lambda_kinesis_event(kinesis, streams[0], SHARD), CONTEXT)


def test_no_live_model_is_a_clear_error_and_nothing_is_kept(
    streams: Tuple[str, str], kinesis: Any, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = create_bucket(s3)
    monkeypatch.setenv(STREAM.lambda_bucket_variable, bucket)
    put_events(kinesis, streams[0], [order("ORD-0")])

    with pytest.raises(NoObjectsError, match=rf"s3://{bucket}/{LAYOUT.models_prefix}: no \.pkl object"):
        lambda_handler.handler(lambda_kinesis_event(kinesis, streams[0], SHARD), CONTEXT)
    assert lambda_handler._loaded is None


def test_a_lambda_record_becomes_the_cores_record() -> None:
    from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord

    sequence = "49590338271490256608559692538361571095921575989136588898"
    raw = {"kinesis": {"partitionKey": "p-1", "sequenceNumber": sequence,
                       "data": "eyJvcmRlcl9pZCI6ICJPUkQtMSJ9", "kinesisSchemaVersion": "1.0",
                       "approximateArrivalTimestamp": 1545084650.987},
           "eventID": f"shardId-000000000006:{sequence}",
           "eventSource": "aws:kinesis", "eventName": "aws:kinesis:record"}

    assert lambda_handler.stream_record(KinesisStreamRecord(raw)) == StreamRecord(
        "shardId-000000000006", sequence, b'{"order_id": "ORD-1"}', "p-1")


# --- the package --------------------------------------------------------------------------------

def test_the_handler_runs_from_a_package_of_requirements_lambda_alone(
    streams: Tuple[str, str], kinesis: Any, s3_env: Dict[str, str], tmp_path: Path
) -> None:
    """No library beyond requirements_lambda.txt's is needed: in a Python without site-packages,
    with only the package's folder and pipeline/ on its path, the handler loads the model and
    answers a batch (and pandas, FastAPI and uvicorn are not even importable there)."""
    input_stream, output_stream = streams
    put_events(kinesis, input_stream, [order("ORD-0"), b"junk"])
    package = lambda_package(tmp_path / "package")
    probe = (
        "import json, sys\n"
        f"sys.path[:0] = [{str(package)!r}, {str(LOCAL.repo_root)!r}]\n"
        "from pipeline.streaming.lambda_handler import handler\n"
        "print(json.dumps(handler(json.load(sys.stdin), None)))\n"
        "print(sorted(m for m in ('pandas', 'fastapi', 'uvicorn') if m in sys.modules))\n"
    )
    env = {**s3_env, STREAM.lambda_bucket_variable: os.environ[STREAM.lambda_bucket_variable],
           STREAM.lambda_output_stream_variable: output_stream}

    result = subprocess.run([sys.executable, "-S", "-c", probe], input=json.dumps(
        lambda_kinesis_event(kinesis, input_stream, SHARD)), capture_output=True, text=True, env=env, timeout=120)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == ['{"batchItemFailures": []}', "[]"]
    assert [p["order_id"] for p in outputs(kinesis, output_stream)] == ["ORD-0"]


def test_requirements_lambda_pins_everything_its_lines_pull_in() -> None:
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = [line.split("#", 1)[0].strip() for line in LAMBDA_REQUIREMENTS.read_text().splitlines()]
    pinned = {canonicalize_name(line.split("==")[0]) for line in lines if line}
    unpinned = set()
    for name in pinned:
        for requirement in map(Requirement, metadata.distribution(name).requires or []):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                if canonicalize_name(requirement.name) not in pinned:
                    unpinned.add((name, requirement.name))
    assert sorted(unpinned) == []
