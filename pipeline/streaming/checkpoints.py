"""The stream consumer's checkpoints: each shard's last processed sequence number, in S3.

One small JSON object per consumer name, input stream and shard
(`stream-checkpoints/<consumer>/<stream>/<shard id>.json`, `layout.stream_checkpoint_key`):

    {"consumer": "stream-predict", "stream": "orders", "shard_id": "shardId-000000000000",
     "sequence_number": "4959...", "finished": false, "updated_at": "2026-12-04T06:00:00+00:00"}

`sequence_number` is the last record of the shard whose output (prediction or dead letter)
is written; null while none is. `finished` says that the shard is closed (after a reshard)
and read to its end, so that its children are read next. The consumer writes a checkpoint
only after a batch's output is written: S3 answers a put only once the object is stored
durably, so a checkpoint never names a record whose output could still be lost.
"""
import json
from datetime import datetime, timezone
from typing import Any, Dict, NamedTuple, Optional

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.storage.client import StorageError, get_object_bytes, put_object_bytes, storage_error
from pipeline.storage.layout import stream_checkpoint_key, stream_checkpoints_prefix
from pipeline.utils import quote

# The largest checkpoint read: one is about 200 bytes.
_MAX_CHECKPOINT_BYTES = 64 * 1024


class Checkpoint(NamedTuple):
    """How far one shard has been processed."""

    shard_id: str
    sequence_number: Optional[str] = None
    finished: bool = False


class CheckpointStore:
    """The checkpoints of one consumer of one stream, in a bucket.

    Args:
        bucket: the bucket the consumer serves (its models are there too).
        client: an S3 client (`storage.client.s3_client`).
        consumer_name: the consumer's name (--consumer-name).
        stream_name: the input stream.
    """

    def __init__(self, bucket: str, client: Any, consumer_name: str, stream_name: str) -> None:
        self.bucket = bucket
        self.client = client
        self.consumer_name = consumer_name
        self.stream_name = stream_name

    def key(self, shard_id: str) -> str:
        """The S3 key of a shard's checkpoint."""
        return stream_checkpoint_key(self.consumer_name, self.stream_name, shard_id)

    def load_all(self) -> Dict[str, Checkpoint]:
        """Every checkpoint of this consumer and stream, by shard id.

        Raises:
            NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed, or a
                checkpoint is not one (naming its key).
        """
        prefix = stream_checkpoints_prefix(self.consumer_name, self.stream_name)
        keys = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                keys += [item["Key"] for item in page.get("Contents", []) if item["Key"].endswith(".json")]
        except (ClientError, BotoCoreError) as error:
            raise storage_error(error, self.bucket, prefix, "list") from error
        checkpoints = {}
        for key in keys:
            body, _ = get_object_bytes(self.client, self.bucket, key, max_bytes=_MAX_CHECKPOINT_BYTES)
            checkpoint = parse_checkpoint(body, f"s3://{self.bucket}/{key}")
            checkpoints[checkpoint.shard_id] = checkpoint
        return checkpoints

    def save(self, checkpoint: Checkpoint) -> None:
        """Write a shard's checkpoint, replacing the one before; returns once S3 has stored it.

        Raises:
            NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed.
        """
        body = json.dumps({
            "consumer": self.consumer_name,
            "stream": self.stream_name,
            "shard_id": checkpoint.shard_id,
            "sequence_number": checkpoint.sequence_number,
            "finished": checkpoint.finished,
            "updated_at": datetime.now(timezone.utc).isoformat(),
        }, sort_keys=True).encode("utf-8")
        put_object_bytes(self.bucket, self.key(checkpoint.shard_id), body, "application/json", self.client)


def parse_checkpoint(body: bytes, where: str) -> Checkpoint:
    """A checkpoint from its stored bytes.

    Raises:
        StorageError: the bytes are not a checkpoint, naming `where` and the problem.
    """
    try:
        value = json.loads(body)
    except ValueError as error:
        raise StorageError(f"{where}: the checkpoint is not JSON: {error}") from error
    if not isinstance(value, dict):
        raise StorageError(f"{where}: the checkpoint is not a JSON object")
    shard_id, sequence, finished = value.get("shard_id"), value.get("sequence_number"), value.get("finished")
    if not isinstance(shard_id, str) or not shard_id:
        raise StorageError(f"{where}: the checkpoint's shard_id is {quote(shard_id)}, not a shard id")
    if sequence is not None and not (isinstance(sequence, str) and sequence.isdigit()):
        raise StorageError(f"{where}: the checkpoint's sequence_number is {quote(sequence)}, not a sequence number")
    if not isinstance(finished, bool):
        raise StorageError(f"{where}: the checkpoint's finished is {quote(finished)}, not true or false")
    return Checkpoint(shard_id, sequence, finished)
