"""The bucket's layout: where each kind of object lives, the format of its key, and "newest".

Layout of a bucket::

    datasets/time_to_dispatch_<ISO-8601 timestamp>.csv   weekly data from data engineering
    models/time_to_dispatch_<UTC timestamp>_<id>.pkl    model artefacts, never overwritten
    registry/<artefact file stem>/<n>_<artefact file stem>.json
                                                         who rejected or restored a model, when, why
                                                         (its n-th change; earlier: <UTC timestamp>_<action>.json)
    reports/<artefact file stem>/report.json, *.png, report.html
                                                         each training run's model report
    predictions/<dataset file stem>.csv                  the backfill's estimates for a week
    predictions/backtest.json, predictions/backtest_mae.png
                                                         the backfill's summary and its plot
    stream-dead-letters/<source>/<shard id>/<first sequence number>.jsonl
                                                         stream records that could not be scored, one
                                                         object per batch (docs/streaming.md)
    stream-checkpoints/<consumer name>/<input stream>/<shard id>.json
                                                         the stream consumer's last processed sequence
                                                         number of each shard, overwritten at each batch

"Newest" is the newest timestamp in the key, over every object under the prefix (listings
are paged, 1,000 keys a page). Keys without a timestamp are skipped, keys whose timestamp is
not a real date (`2026-02-30`) are skipped with a WARNING, and so are keys dated more than
LAYOUT.clock_skew_allowance_hours in the future: one mistyped `2099` must not stay "newest" for ever. For
models, the one that counts is the *live* model, the newest that is not rejected
(`pipeline/model_registry/live_model.py`).
"""
import logging
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, NamedTuple, Optional

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.artefact.model import Model
from pipeline.settings import LAYOUT
from pipeline.storage.client import StorageError, s3_client, storage_error

log = logging.getLogger(__name__)

# A date, then a time whose parts may be separated by ':' or any other single non-digit
# character (data engineering's keys include `16|45|38`), optional fractional seconds and
# an optional UTC offset. Naive timestamps are taken as UTC.
_TIMESTAMP = re.compile(
    r"(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})[T _]"
    r"(?P<hour>\d{2})(?P<sep>[^\d]?)(?P<minute>\d{2})(?P=sep)(?P<second>\d{2})"
    r"(?:[.,](?P<fraction>\d{1,6}))?"
    r"(?P<tz>Z|[+-]\d{2}(?:[^\d]?\d{2})?)?"
)


class NoObjectsError(StorageError):
    """No object under the prefix has a key with a parsable timestamp."""


class StoredObject(NamedTuple):
    """A listed object whose key carries a timestamp."""

    key: str
    timestamp: datetime


def parse_key_timestamp(key: str) -> Optional[datetime]:
    """The timestamp in an object key's file name, as an aware UTC datetime.

    Returns None when the file name has no timestamp that parses to a real date and time.
    """
    name = key.rsplit("/", 1)[-1]
    match = _TIMESTAMP.search(name)
    if match is None:
        return None
    parts = match.groupdict()
    try:
        stamp = datetime(
            int(parts["year"]), int(parts["month"]), int(parts["day"]),
            int(parts["hour"]), int(parts["minute"]), int(parts["second"]),
            int((parts["fraction"] or "0").ljust(6, "0")),
        )
    except ValueError:
        return None
    tz = parts["tz"]
    if tz and tz != "Z":
        digits = re.sub(r"[^\d]", "", tz[1:])
        hours, minutes = int(digits[:2]), int(digits[2:] or 0)
        if hours > 23 or minutes > 59:
            return None
        offset = (hours * 60 + minutes) * (1 if tz[0] == "+" else -1)
        return (stamp - timedelta(minutes=offset)).replace(tzinfo=timezone.utc)
    return stamp.replace(tzinfo=timezone.utc)


def dataset_key(timestamp: datetime) -> str:
    """The key data engineering would give a dataset dropped at `timestamp`."""
    return f"{LAYOUT.datasets_prefix}{LAYOUT.dataset_file_stem}_{utc(timestamp):%Y-%m-%dT%H:%M:%S}.csv"


def model_key(model: Model) -> str:
    """The key of a model artefact: creation time to the microsecond plus the artefact id."""
    stamp = f"{utc(model.created_at):%Y-%m-%dT%H:%M:%S.%f}Z"
    return f"{LAYOUT.models_prefix}{LAYOUT.model_file_stem}_{stamp}_{model.artefact_id}.pkl"


def artefact_file_stem(key: str) -> str:
    """The file name of a model artefact's key without its extension: the name its registry
    records and its report are filed under."""
    return key.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def artefact_id_of_key(key: str) -> str:
    """The artefact id a model key ends with (`..._<id>.pkl`)."""
    return artefact_file_stem(key).rsplit("_", 1)[-1]


def report_prefix(model: Model) -> str:
    """The folder of a run's report: named after the artefact key the model has or would get,
    so that its name holds the artefact id (the run's id when the model is refused)."""
    return f"{LAYOUT.reports_prefix}{artefact_file_stem(model_key(model))}/"


def predictions_key(dataset_key: str) -> str:
    """Where the backfill writes a week's estimates: `predictions/<dataset file stem>.csv`."""
    stem = dataset_key.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return f"{LAYOUT.predictions_prefix}{stem}.csv"


def dead_letter_key(source: str, shard_id: str, first_sequence_number: str) -> str:
    """Where a batch's dead letters go: `stream-dead-letters/<source>/<shard id>/<first sequence
    number>.jsonl`, `source` being what read the stream (the Lambda handler, a consumer)."""
    return f"{LAYOUT.stream_dead_letters_prefix}{source}/{shard_id}/{first_sequence_number}.jsonl"


def stream_checkpoints_prefix(consumer_name: str, stream_name: str) -> str:
    """Where the stream consumer `consumer_name` keeps its checkpoints of `stream_name`'s shards."""
    return f"{LAYOUT.stream_checkpoints_prefix}{consumer_name}/{stream_name}/"


def stream_checkpoint_key(consumer_name: str, stream_name: str, shard_id: str) -> str:
    """The checkpoint of one shard: `stream-checkpoints/<consumer>/<stream>/<shard id>.json`."""
    return f"{stream_checkpoints_prefix(consumer_name, stream_name)}{shard_id}.json"


def list_timestamped_objects(
    bucket: str, prefix: str, suffix: str, client: Any = None
) -> Iterator[StoredObject]:
    """Every object under `prefix` ending in `suffix` whose key has a timestamp, all pages.

    Raises:
        NoSuchBucketError, AccessDeniedError, StorageError: naming the bucket and prefix.

    Keys dated after now + LAYOUT.clock_skew_allowance_hours, and keys whose timestamp is not a real date,
    are skipped with a WARNING naming them.
    """
    client = client or s3_client()
    paginator = client.get_paginator("list_objects_v2")
    latest_allowed = datetime.now(timezone.utc) + timedelta(hours=LAYOUT.clock_skew_allowance_hours)
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                if not key.lower().endswith(suffix):
                    continue
                stamp = parse_key_timestamp(key)
                if stamp is None:
                    if _TIMESTAMP.search(key.rsplit("/", 1)[-1]):
                        log.warning(f"skipping s3://{bucket}/{key}: its timestamp is not a real date and time")
                    else:
                        log.debug(f"skipping s3://{bucket}/{key}: no timestamp in its name")
                    continue
                if stamp > latest_allowed:
                    log.warning(
                        f"skipping s3://{bucket}/{key}: dated {stamp.isoformat()}, later than now "
                        f"plus {LAYOUT.clock_skew_allowance_hours:g} h; a mistyped or future date "
                        "must not become the newest"
                    )
                    continue
                yield StoredObject(key, stamp)
    except (ClientError, BotoCoreError) as error:
        raise storage_error(error, bucket, prefix, "list") from error


def latest_object(bucket: str, prefix: str, suffix: str, client: Any = None) -> StoredObject:
    """The object under `prefix` with the newest timestamp in its key (ties: greatest key).

    Raises:
        NoObjectsError: if no key under the prefix has a parsable timestamp.
        NoSuchBucketError, AccessDeniedError, StorageError: if the listing fails.
    """
    newest: Optional[StoredObject] = None
    for item in list_timestamped_objects(bucket, prefix, suffix, client):
        if newest is None or (item.timestamp, item.key) > (newest.timestamp, newest.key):
            newest = item
    if newest is None:
        raise NoObjectsError(
            f"s3://{bucket}/{prefix}: no {suffix} object with a timestamp in its key"
        )
    return newest


def utc(timestamp: datetime) -> datetime:
    """`timestamp` in UTC; a naive one is taken as UTC."""
    if timestamp.tzinfo is None:
        return timestamp.replace(tzinfo=timezone.utc)
    return timestamp.astimezone(timezone.utc)
