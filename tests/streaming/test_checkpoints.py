"""The consumer's checkpoints in S3: one JSON object per consumer, stream and shard."""
import json
import re
from typing import Any

import pytest

from pipeline.storage.client import StorageError
from pipeline.streaming.checkpoints import Checkpoint, CheckpointStore, parse_checkpoint


def test_a_saved_checkpoint_is_loaded_back(s3: Any, bucket: str) -> None:
    store = CheckpointStore(bucket, s3, "consumer-a", "orders")
    store.save(Checkpoint("shardId-000000000001", "49590338271490256608559692538361571095921575989136588818"))

    assert store.load_all() == {"shardId-000000000001": Checkpoint(
        "shardId-000000000001", "49590338271490256608559692538361571095921575989136588818", False)}


def test_a_checkpoint_is_a_small_json_object_under_the_consumer_and_stream(s3: Any, bucket: str) -> None:
    CheckpointStore(bucket, s3, "consumer-a", "orders").save(Checkpoint("shardId-000000000000", "42", True))

    body = s3.get_object(Bucket=bucket, Key="stream-checkpoints/consumer-a/orders/shardId-000000000000.json")
    value = json.loads(body["Body"].read())
    assert {k: v for k, v in value.items() if k != "updated_at"} == {
        "consumer": "consumer-a", "stream": "orders", "shard_id": "shardId-000000000000", "sequence_number": "42",
        "finished": True}
    assert value["updated_at"].endswith("+00:00")


def test_saving_again_replaces_the_shards_checkpoint(s3: Any, bucket: str) -> None:
    store = CheckpointStore(bucket, s3, "consumer-a", "orders")
    store.save(Checkpoint("shardId-000000000000", "7"))
    store.save(Checkpoint("shardId-000000000000", "19"))

    assert store.load_all() == {"shardId-000000000000": Checkpoint("shardId-000000000000", "19", False)}


def test_consumers_of_other_names_or_streams_keep_their_checkpoints_apart(s3: Any, bucket: str) -> None:
    CheckpointStore(bucket, s3, "consumer-a", "orders").save(Checkpoint("shardId-000000000000", "7"))
    CheckpointStore(bucket, s3, "consumer-b", "orders").save(Checkpoint("shardId-000000000000", "8"))
    CheckpointStore(bucket, s3, "consumer-a", "orders-2").save(Checkpoint("shardId-000000000000", "9"))

    assert CheckpointStore(bucket, s3, "consumer-a", "orders").load_all()["shardId-000000000000"].sequence_number == "7"


def test_no_checkpoints_yet_is_an_empty_mapping(s3: Any, bucket: str) -> None:
    assert CheckpointStore(bucket, s3, "consumer-a", "orders").load_all() == {}


def test_a_checkpoint_that_is_not_json_is_refused_naming_its_key(s3: Any, bucket: str) -> None:
    key = "stream-checkpoints/consumer-a/orders/shardId-000000000000.json"
    s3.put_object(Bucket=bucket, Key=key, Body=b"{not json")

    with pytest.raises(StorageError, match=f"s3://{bucket}/{key}: the checkpoint is not JSON"):
        CheckpointStore(bucket, s3, "consumer-a", "orders").load_all()


def test_a_missing_bucket_is_a_storage_error(s3: Any) -> None:
    with pytest.raises(StorageError, match="bucket does not exist"):
        CheckpointStore("ttd-no-such-bucket-here", s3, "consumer-a", "orders").save(Checkpoint("shardId-000000000000"))


@pytest.mark.parametrize("value, problem", [
    ({"shard_id": "", "sequence_number": "1", "finished": False}, "'s shard_id is ''"),
    ({"shard_id": "s", "sequence_number": "12a", "finished": False}, "'s sequence_number is '12a'"),
    ({"shard_id": "s", "sequence_number": 12, "finished": False}, "'s sequence_number is 12"),
    ({"shard_id": "s", "sequence_number": None, "finished": "no"}, "'s finished is 'no'"),
    ([1, 2], " is not a JSON object"),
], ids=["empty shard id", "sequence not digits", "sequence a number", "finished not a boolean", "a list"])
def test_a_checkpoint_with_a_bad_field_is_refused_naming_the_field(value: Any, problem: str) -> None:
    with pytest.raises(StorageError, match=f"^here: the checkpoint{re.escape(problem)}"):
        parse_checkpoint(json.dumps(value).encode(), "here")


def test_a_checkpoint_without_a_sequence_number_is_a_shard_not_yet_processed() -> None:
    body = json.dumps({"shard_id": "s", "sequence_number": None, "finished": True}).encode()

    assert parse_checkpoint(body, "here") == Checkpoint("s", None, True)
