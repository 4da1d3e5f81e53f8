"""Writing predictions to a real Kinesis stream and dead letters to a real bucket, over HTTP on
the local AWS server: PutRecords' limits, retrying only the failed entries of a partial failure
(the fault proxy takes them out and answers them throttled), and the dead letters' format."""
import base64
import json
from typing import Any, Callable, Dict, List

import boto3
import pytest
from botocore.exceptions import ClientError

from pipeline.settings import LAYOUT, STREAM
from pipeline.storage.client import NoSuchBucketError
from pipeline.streaming.events import DeadLetter, ScoredEvent, StreamRecord
from pipeline.streaming.output import DeadLetterStore, StreamError, put_predictions
from tests.helpers import AwsFaultProxy, read_stream

SHARD = "shardId-000000000001"


def scored_events(count: int, padding: int = 0) -> List[ScoredEvent]:
    events = []
    for i in range(count):
        prediction = {"order_id": f"ORD-{i}", "est_hours_to_dispatch": 1.5 + i, "pad": "x" * padding}
        data = json.dumps(prediction).encode()
        events.append(ScoredEvent(StreamRecord(SHARD, str(i), b"{}", ""), f"ORD-{i}", prediction, data))
    return events


def through(proxy: AwsFaultProxy) -> Any:
    """A Kinesis client that goes through the fault proxy."""
    return boto3.client("kinesis", endpoint_url=proxy.endpoint)


def no_wait(waits: List[float]) -> Callable[[float], None]:
    return waits.append


# --- predictions ------------------------------------------------------------------------------

def test_every_prediction_is_written_with_its_order_id_as_partition_key(kinesis: Any, new_stream: Any) -> None:
    stream = new_stream(shards=2)
    events = scored_events(20)

    assert put_predictions(kinesis, stream, events) == []

    records = read_stream(kinesis, stream)
    assert sorted((r["PartitionKey"], r["Data"]) for r in records) == sorted((e.order_id, e.data) for e in events)


def test_a_prediction_made_by_hand_without_data_is_encoded(kinesis: Any, new_stream: Any) -> None:
    stream = new_stream()
    event = ScoredEvent(StreamRecord(SHARD, "1", b"{}"), "ORD-1", {"order_id": "ORD-1", "x": 1.5})

    put_predictions(kinesis, stream, [event])

    assert [json.loads(r["Data"]) for r in read_stream(kinesis, stream)] == [{"order_id": "ORD-1", "x": 1.5}]


def test_puts_are_at_most_500_entries_a_call(aws_proxy: AwsFaultProxy, kinesis: Any,
                                             new_stream: Any) -> None:
    stream = new_stream()

    put_predictions(through(aws_proxy), stream, scored_events(1201))

    assert [len(call) for call in aws_proxy.put_records_calls] == [500, 500, 201]
    assert len(read_stream(kinesis, stream)) == 1201


def test_puts_are_at_most_5_mib_a_call(aws_proxy: AwsFaultProxy, kinesis: Any, new_stream: Any) -> None:
    stream = new_stream()
    events = scored_events(12, padding=900 * 1024)

    put_predictions(through(aws_proxy), stream, events)

    assert [len(call) for call in aws_proxy.put_records_calls] == [5, 5, 2]
    assert len(read_stream(kinesis, stream)) == 12


def test_a_partial_failure_retries_only_the_failed_entries(aws_proxy: AwsFaultProxy, kinesis: Any,
                                                           new_stream: Any) -> None:
    stream = new_stream(shards=2)
    aws_proxy.fail("ORD-3", times=1)
    aws_proxy.fail("ORD-7", times=2)
    waits: List[float] = []

    unwritten = put_predictions(through(aws_proxy), stream, scored_events(10), sleep=no_wait(waits))

    assert unwritten == []
    assert aws_proxy.put_records_calls == [[f"ORD-{i}" for i in range(10)], ["ORD-3", "ORD-7"], ["ORD-7"]]
    assert sorted(r["PartitionKey"] for r in read_stream(kinesis, stream)) == sorted(f"ORD-{i}" for i in range(10))
    assert waits == [STREAM.put_backoff_seconds, 2 * STREAM.put_backoff_seconds]


def test_entries_still_failed_after_every_attempt_are_returned_in_input_order(
    aws_proxy: AwsFaultProxy, kinesis: Any, new_stream: Any
) -> None:
    stream = new_stream()
    aws_proxy.fail("ORD-8")
    aws_proxy.fail("ORD-2")
    events = scored_events(10)

    unwritten = put_predictions(through(aws_proxy), stream, events, sleep=no_wait([]))

    assert unwritten == [events[2], events[8]]
    assert len(aws_proxy.put_records_calls) == STREAM.put_attempts
    assert sorted(r["PartitionKey"] for r in read_stream(kinesis, stream)) == sorted(
        f"ORD-{i}" for i in range(10) if i not in (2, 8))


def test_the_waits_between_attempts_double_up_to_the_cap(aws_proxy: AwsFaultProxy, new_stream: Any) -> None:
    stream = new_stream()
    aws_proxy.fail("ORD-0")
    waits: List[float] = []

    put_predictions(through(aws_proxy), stream, scored_events(1), sleep=no_wait(waits))

    expected = [min(STREAM.put_backoff_seconds * 2 ** n, STREAM.max_put_backoff_seconds)
                for n in range(STREAM.put_attempts - 1)]
    assert waits == expected


def test_a_missing_stream_is_a_stream_error_naming_it(kinesis: Any) -> None:
    with pytest.raises(StreamError, match=r"stream 'no-such-stream' does not exist \(ResourceNotFoundException"):
        put_predictions(kinesis, "no-such-stream", scored_events(1))


def test_nothing_to_put_makes_no_call(aws_proxy: AwsFaultProxy, new_stream: Any) -> None:
    assert put_predictions(through(aws_proxy), new_stream(), []) == []
    assert aws_proxy.put_records_calls == []


class RefusingKinesis:
    """A stub client whose every PutRecords raises `code`: the whole-call failures the local
    server cannot make (access denied, a throttled call)."""

    def __init__(self, code: str) -> None:
        self.code, self.calls = code, 0

    def put_records(self, **_: Any) -> Dict[str, Any]:
        self.calls += 1
        raise ClientError({"Error": {"Code": self.code, "Message": "refused"}}, "PutRecords")


def test_access_denied_is_a_stream_error_naming_the_stream() -> None:
    with pytest.raises(StreamError, match=r"stream 'out': access denied \(AccessDeniedException: refused\)"):
        put_predictions(RefusingKinesis("AccessDeniedException"), "out", scored_events(1))


def test_a_throttled_call_is_retried_then_its_entries_returned_unwritten() -> None:
    client = RefusingKinesis("ProvisionedThroughputExceededException")
    events = scored_events(3)

    assert put_predictions(client, "out", events, sleep=no_wait([])) == events
    assert client.calls == STREAM.put_attempts


# --- dead letters -----------------------------------------------------------------------------

def dead_letters() -> List[DeadLetter]:
    return [
        DeadLetter(StreamRecord(SHARD, "49590338271490256608559692538361571095921575989136588898", b"\xffjunk",
                                "p-1"), "not UTF-8: invalid start byte at byte 0"),
        DeadLetter(StreamRecord(SHARD, "49590338271490256608559692538361571095921575989136588899",
                                b'{"order_id": "ORD-2", "orders_placed": -1}', "p-2"),
                   "orders_placed: Input should be greater than or equal to 0"),
    ]


def test_dead_letters_are_one_json_lines_object_under_the_prefix(s3: Any, bucket: str) -> None:
    letters = dead_letters()

    key = DeadLetterStore(bucket, s3, "consumer-a").write(letters)

    assert key == f"{LAYOUT.stream_dead_letters_prefix}consumer-a/{SHARD}/{letters[0].record.sequence_number}.jsonl"
    lines = [json.loads(line) for line in s3.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines()]
    assert [{k: v for k, v in line.items() if k != "received_at"} for line in lines] == [
        {"shard_id": SHARD, "sequence_number": letter.record.sequence_number,
         "partition_key": letter.record.partition_key, "reason": letter.reason,
         "data_base64": base64.b64encode(letter.record.data).decode()} for letter in letters]
    assert [base64.b64decode(line["data_base64"]) for line in lines] == [b"\xffjunk", letters[1].record.data]
    assert lines[0]["received_at"].endswith("+00:00")


def test_no_dead_letters_write_no_object(s3: Any, bucket: str) -> None:
    assert DeadLetterStore(bucket, s3, "consumer-a").write([]) is None
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_a_dead_letter_write_that_fails_raises(s3: Any) -> None:
    with pytest.raises(NoSuchBucketError, match="no-such-bucket"):
        DeadLetterStore("no-such-bucket", s3, "consumer-a").write(dead_letters())


@pytest.mark.parametrize("source", ["", "a/b"])
def test_a_source_that_is_not_a_folder_name_is_refused(s3: Any, source: str) -> None:
    with pytest.raises(ValueError, match="a dead-letter source is a non-empty name without '/'"):
        DeadLetterStore("bucket", s3, source)
