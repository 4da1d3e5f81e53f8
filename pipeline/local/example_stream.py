"""The local run's streams (`--with-stream`): the two Kinesis streams on the embedded server,
a few example order events put on the input stream, and what comes back: the predictions on
the output stream and the dead letter in the bucket.

Imported by `pipeline/local/run.py` only once the virtualenv is ready (it needs boto3).
"""
import json
import time
from typing import Any, Dict, List, Sequence

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.settings import LAYOUT, STREAM
from pipeline.storage.client import s3_client
from pipeline.streaming.output import kinesis_client

# Four order events the consumer predicts for, and one it cannot score (orders_placed < 0),
# which becomes a dead letter.
EXAMPLE_EVENTS = (
    {"order_id": "ORD-LOCAL-1", "product_code": "SKU001", "orders_placed": 112, "channel": "web"},
    {"order_id": "ORD-LOCAL-2", "product_code": "SKU003", "orders_placed": 87, "channel": "app"},
    {"order_id": "ORD-LOCAL-3", "product_code": "SKU005", "orders_placed": 12.5, "channel": "web"},
    {"order_id": "ORD-LOCAL-4", "product_code": "SKU002", "orders_placed": 0, "channel": "store"},
    {"order_id": "ORD-LOCAL-5", "product_code": "SKU004", "orders_placed": -3, "channel": "web"},
)
VALID_EXAMPLES = 4


class ExampleStreamError(Exception):
    """A stream could not be made, written or read; the message says which and why."""


def create_streams(input_stream: str, output_stream: str, input_shards: int) -> None:
    """Create the input stream (`input_shards` shards) and the output stream (one), active.

    Raises:
        ExampleStreamError: Kinesis refused or failed.
    """
    client = kinesis_client()
    try:
        for name, shards in ((input_stream, input_shards), (output_stream, 1)):
            client.create_stream(StreamName=name, ShardCount=shards)
            client.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    except (ClientError, BotoCoreError) as error:
        raise ExampleStreamError(f"cannot create the stream {name}: {error}") from error


def put_examples(input_stream: str, events: Sequence[Dict[str, Any]] = EXAMPLE_EVENTS) -> None:
    """Put the example events on the input stream, each with its order_id as partition key.

    Raises:
        ExampleStreamError: Kinesis refused or failed.
    """
    entries = [{"Data": json.dumps(event).encode("utf-8"), "PartitionKey": str(event["order_id"])}
               for event in events]
    try:
        response = kinesis_client().put_records(StreamName=input_stream, Records=entries)
    except (ClientError, BotoCoreError) as error:
        raise ExampleStreamError(f"cannot put the example events on {input_stream}: {error}") from error
    if response.get("FailedRecordCount"):
        raise ExampleStreamError(f"{response['FailedRecordCount']} example event(s) were not taken by {input_stream}")


def read_predictions(output_stream: str, expected: int, timeout: float) -> List[Dict[str, Any]]:
    """The predictions on the output stream, from its beginning, once `expected` are there.

    Raises:
        ExampleStreamError: fewer than `expected` within `timeout` seconds, or Kinesis failed.
    """
    client = kinesis_client()
    deadline = time.monotonic() + timeout
    try:
        shards = client.list_shards(StreamName=output_stream)["Shards"]
        iterators = {shard["ShardId"]: client.get_shard_iterator(
            StreamName=output_stream, ShardId=shard["ShardId"],
            ShardIteratorType=STREAM.start_positions[0])["ShardIterator"] for shard in shards}
        found: List[Dict[str, Any]] = []
        while len(found) < expected:
            if time.monotonic() > deadline:
                raise ExampleStreamError(f"{len(found)} of {expected} predictions on {output_stream} after "
                                         f"{timeout:g} s")
            for shard_id, iterator in list(iterators.items()):
                response = client.get_records(ShardIterator=iterator, Limit=STREAM.get_records_limit)
                found += [json.loads(record["Data"]) for record in response["Records"]]
                iterators[shard_id] = response["NextShardIterator"]
            time.sleep(STREAM.min_read_interval_seconds)
        return found
    except (ClientError, BotoCoreError) as error:
        raise ExampleStreamError(f"cannot read the predictions on {output_stream}: {error}") from error


def read_dead_letters(bucket: str, source: str, expected: int, timeout: float) -> List[Dict[str, Any]]:
    """The dead letters the consumer named `source` wrote, once `expected` are there.

    Raises:
        ExampleStreamError: fewer than `expected` within `timeout` seconds, or S3 failed.
    """
    client = s3_client()
    prefix = f"{LAYOUT.stream_dead_letters_prefix}{source}/"
    deadline = time.monotonic() + timeout
    try:
        while True:
            letters: List[Dict[str, Any]] = []
            for item in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
                body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().decode("utf-8")
                letters += [{**json.loads(line), "key": item["Key"]} for line in body.splitlines() if line.strip()]
            if len(letters) >= expected:
                return letters
            if time.monotonic() > deadline:
                raise ExampleStreamError(f"{len(letters)} of {expected} dead letters under s3://{bucket}/{prefix} "
                                         f"after {timeout:g} s")
            time.sleep(STREAM.min_read_interval_seconds)
    except (ClientError, BotoCoreError) as error:
        raise ExampleStreamError(f"cannot read the dead letters under s3://{bucket}/{prefix}: {error}") from error
