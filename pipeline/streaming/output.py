"""Where a batch's results go: predictions to the output stream, dead letters to the bucket.

The only module of the streaming core that talks to Kinesis or S3 (plain boto3; the standard
AWS environment variables select the endpoint, as for S3).

`put_predictions` writes with PutRecords, at most STREAM.max_put_records_entries entries and
STREAM.max_put_records_bytes bytes a call, partition key `order_id`. A PutRecords answer can
mark some entries failed (a shard over its write quota answers
ProvisionedThroughputExceededException for its entries only): those entries, and only those,
are sent again, up to STREAM.put_attempts attempts with a doubling backoff, and the ones still
failed after that are returned to the caller, who must not acknowledge them.

`DeadLetterStore` writes a batch's dead letters as one JSON-lines object under
`stream-dead-letters/<source>/<shard id>/<first sequence number>.jsonl`, one line a record:

    {"shard_id": "shardId-000000000000", "sequence_number": "4954...", "partition_key": "ORD-1",
     "reason": "orders_placed: Input should be greater than or equal to 0",
     "data_base64": "eyJvcmRlcl9pZCI6...", "received_at": "2026-12-04T05:50:00.123456+00:00"}
"""
import base64
import json
import logging
import time
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Sequence

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from pipeline.settings import STREAM
from pipeline.storage.client import error_code, put_object_bytes
from pipeline.storage.layout import dead_letter_key
from pipeline.streaming.events import DeadLetter, ScoredEvent, encode_prediction
from pipeline.utils import quote

# Whole-call failures that are worth another attempt: the entries are then unwritten, not lost.
_TRANSIENT_CODES = frozenset({
    "ProvisionedThroughputExceededException", "ThrottlingException", "LimitExceededException",
    "InternalFailure", "InternalServerError", "ServiceUnavailable", "KMSThrottlingException",
})
_MISSING_CODES = frozenset({"ResourceNotFoundException"})
_DENIED_CODES = frozenset({"AccessDeniedException", "AccessDenied", "UnrecognizedClientException",
                           "InvalidSignatureException", "ExpiredTokenException"})

log = logging.getLogger(__name__)


class StreamError(Exception):
    """The output stream cannot be written at all: it does not exist, access is denied, or the
    call is refused as invalid. Entries a PutRecords answer marks failed are not this."""


def kinesis_client() -> Any:
    """A boto3 Kinesis client configured from the standard AWS environment variables, with the
    streaming timeouts and botocore's standard retries (STREAM.kinesis_*)."""
    config = Config(
        connect_timeout=STREAM.kinesis_connect_timeout_seconds,
        read_timeout=STREAM.kinesis_read_timeout_seconds,
        retries={"mode": "standard", "total_max_attempts": STREAM.kinesis_max_attempts},
    )
    return boto3.client("kinesis", config=config)


def put_predictions(
    kinesis: Any, stream_name: str, scored: Sequence[ScoredEvent], sleep: Optional[Callable[[float], None]] = None
) -> List[ScoredEvent]:
    """Write predictions to the output stream, retrying only the entries that failed.

    Args:
        kinesis: a boto3 Kinesis client (`kinesis_client`).
        stream_name: the output stream.
        scored: the predictions, in input order.
        sleep: how to wait between attempts; `time.sleep` by default.

    Returns:
        The events still not written after STREAM.put_attempts attempts, in input order; an
        empty list when all were written.

    Raises:
        StreamError: the stream does not exist, access is denied, or Kinesis refused a call as
            invalid, naming the stream.
        ValueError: a ScoredEvent made by hand, without `data`, whose prediction cannot be
            encoded (`score_records` dead-letters those instead).
    """
    wait = sleep or time.sleep
    entries = [_entry(event) for event in scored]
    pending = list(range(len(scored)))
    for attempt in range(1, STREAM.put_attempts + 1):
        if attempt > 1:
            wait(min(STREAM.put_backoff_seconds * 2 ** (attempt - 2), STREAM.max_put_backoff_seconds))
        failed: List[int] = []
        reasons: Dict[str, int] = {}
        for call in _calls(pending, entries):
            failed += _put(kinesis, stream_name, call, entries, reasons)
        if not failed:
            return []
        log.warning(f"PutRecords to stream {quote(stream_name)}: {len(failed)} of {len(pending)} entries failed "
                    f"on attempt {attempt} of {STREAM.put_attempts} ({_counted(reasons)})")
        pending = failed
    return [scored[index] for index in pending]


def _entry(event: ScoredEvent) -> Dict[str, Any]:
    data = event.data
    if not data:
        data, problem = encode_prediction(event.prediction, event.order_id)
        if problem:
            raise ValueError(f"the prediction of order {quote(event.order_id)} cannot be written: {problem}")
    return {"Data": data, "PartitionKey": event.order_id}


def _calls(pending: List[int], entries: List[Dict[str, Any]]) -> List[List[int]]:
    """The pending entries cut into PutRecords calls, in order, within both of a call's limits."""
    calls: List[List[int]] = []
    current: List[int] = []
    size = 0
    for index in pending:
        entry = entries[index]
        entry_size = len(entry["Data"]) + len(entry["PartitionKey"].encode("utf-8"))
        if current and (len(current) == STREAM.max_put_records_entries
                        or size + entry_size > STREAM.max_put_records_bytes):
            calls.append(current)
            current, size = [], 0
        current.append(index)
        size += entry_size
    if current:
        calls.append(current)
    return calls


def _put(kinesis: Any, stream_name: str, call: List[int], entries: List[Dict[str, Any]],
         reasons: Dict[str, int]) -> List[int]:
    """One PutRecords call; the indexes of the entries it did not write."""
    try:
        response = kinesis.put_records(StreamName=stream_name, Records=[entries[index] for index in call])
    except ClientError as error:
        code = error_code(error)
        if code not in _TRANSIENT_CODES:
            raise stream_error(error, stream_name) from error
        reasons[code] = reasons.get(code, 0) + len(call)
        return list(call)
    except BotoCoreError as error:
        name = type(error).__name__
        reasons[name] = reasons.get(name, 0) + len(call)
        return list(call)
    if not response.get("FailedRecordCount"):
        return []
    failed = []
    for index, result in zip(call, response["Records"]):
        if result.get("ErrorCode"):
            failed.append(index)
            reasons[result["ErrorCode"]] = reasons.get(result["ErrorCode"], 0) + 1
    return failed


def _counted(reasons: Dict[str, int]) -> str:
    return ", ".join(f"{count} {code}" for code, count in sorted(reasons.items(), key=lambda item: -item[1]))


def stream_error(error: ClientError, stream_name: str) -> StreamError:
    """The StreamError a refused Kinesis call becomes, naming the stream."""
    code = error_code(error)
    message = error.response.get("Error", {}).get("Message", str(error))
    if code in _MISSING_CODES:
        return StreamError(f"stream {quote(stream_name)} does not exist ({code}: {message})")
    if code in _DENIED_CODES:
        return StreamError(f"stream {quote(stream_name)}: access denied ({code}: {message})")
    return StreamError(f"stream {quote(stream_name)}: PutRecords refused ({code}: {message})")


class DeadLetterStore:
    """Writes a batch's dead letters to the bucket, one JSON-lines object a batch."""

    def __init__(self, bucket: str, client: Any, source: str) -> None:
        """
        Args:
            bucket: the bucket (the one whose models are served).
            client: a boto3 S3 client (`s3_client`).
            source: what reads the stream ("lambda", a consumer's name): the folder under the
                dead-letter prefix.

        Raises:
            ValueError: `source` is empty or holds a "/".
        """
        if not source or "/" in source:
            raise ValueError(f"a dead-letter source is a non-empty name without '/', got {quote(source)}")
        self.bucket, self.client, self.source = bucket, client, source

    def write(self, dead_letters: Sequence[DeadLetter]) -> Optional[str]:
        """Write the batch's dead letters as one object; nothing when there are none.

        The key is named after the first dead letter's shard and sequence number; each line
        names its own.

        Returns:
            The object's key, or None when `dead_letters` is empty.

        Raises:
            StorageError (NoSuchBucketError, AccessDeniedError): the object could not be
                written; the caller must then not acknowledge the batch.
        """
        if not dead_letters:
            return None
        received_at = datetime.now(timezone.utc).isoformat()
        lines = [json.dumps({
            "shard_id": letter.record.shard_id,
            "sequence_number": letter.record.sequence_number,
            "partition_key": letter.record.partition_key,
            "reason": letter.reason,
            "data_base64": base64.b64encode(letter.record.data).decode("ascii"),
            "received_at": received_at,
        }) for letter in dead_letters]
        first = dead_letters[0].record
        key = dead_letter_key(self.source, first.shard_id, first.sequence_number)
        return put_object_bytes(self.bucket, key, ("\n".join(lines) + "\n").encode("utf-8"),
                                "application/x-ndjson", self.client)
