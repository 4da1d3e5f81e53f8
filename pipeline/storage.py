"""Versioned datasets and models on S3: the bucket layout, "newest", and integrity.

Layout of a bucket::

    datasets/time_to_dispatch_<ISO-8601 timestamp>.csv   weekly data from data engineering
    models/time_to_dispatch_<UTC timestamp>_<id>.pkl    model artefacts, never overwritten
    registry/<artefact file stem>/<UTC timestamp>_<action>.json
                                                         who rejected or restored a model, when, why
    reports/<artefact file stem>/report.json, *.png, report.html
                                                         each training run's model report
    predictions/<dataset file stem>.csv                  the backfill's estimates for a week
    predictions/backtest.json, predictions/backtest_mae.png
                                                         the backfill's summary and its plot

"Newest" is the newest timestamp in the key, over every object under the prefix (listings
are paged, 1,000 keys a page). Keys without a timestamp are skipped, keys whose timestamp is
not a real date (`2026-02-30`) are skipped with a WARNING, and so are keys dated more than
CLOCK_SKEW_ALLOWANCE in the future: one mistyped `2099` must not stay "newest" for ever. For models,
the one that counts is the *live* model: the newest artefact that is not rejected (its latest
status change in `registry/` is not a rejection); the serve stage, the champion selection and
batch scoring all use `get_live_model`. Each model
artefact carries in its S3 metadata the SHA-256 of its pickled bytes and their HMAC-SHA256
signature under the train stage's signing key (`signing.py`); loading verifies both, unpickles
only the classes a model artefact is made of, and checks the estimator's structure before
anything predicts with it.

Every S3 call has connect and read timeouts and a bounded number of attempts in botocore's
standard retry mode (S3_CONNECT_TIMEOUT_SECONDS, S3_READ_TIMEOUT_SECONDS, S3_MAX_ATTEMPTS):
a hanging S3 fails a stage within its time limit (the arithmetic is in docs/reliability.md).
A dataset larger than MAX_DATASET_BYTES is refused before it is read.

Batch scoring reads objects as a stream of bounded chunks (`open_object_stream`) and writes
them with a multipart upload (`MultipartWriter`) that is aborted on any failure, so a failed
run leaves no partial object.

All S3 access is plain boto3; endpoint, region and credentials come from the standard AWS
environment variables (`AWS_ENDPOINT_URL` selects an S3-compatible server).
"""
import csv
import hashlib
import io
import json
import logging
import os
import pickle
import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Set, Tuple

import boto3
import pandas as pd
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from pipeline.artefact.model import InvalidModelError, Model, check_model_structure
from pipeline.artefact.signing import SignatureError, SigningKeys, load_signing_keys
from pipeline.utils import quote

DATASETS_PREFIX = "datasets/"
MODELS_PREFIX = "models/"
REGISTRY_PREFIX = "registry/"
REPORTS_PREFIX = "reports/"
REPORT_HTML = "report.html"
# What a report's files are served as, by extension; nothing else is written under reports/.
REPORT_CONTENT_TYPES = {".json": "application/json", ".png": "image/png", ".html": "text/html; charset=utf-8"}
PREDICTIONS_PREFIX = "predictions/"
# Prefixes that hold the pipeline's own inputs and artefacts: batch scoring never writes there.
RESERVED_PREFIXES = (DATASETS_PREFIX, MODELS_PREFIX, REGISTRY_PREFIX)
REJECT, RESTORE = "reject", "restore"
STATUS_ACTIONS = (REJECT, RESTORE)
# The shortest start of an artefact id that may name a model.
MIN_ID_PREFIX = 4
DATASET_FILE_STEM = "time_to_dispatch"
MODEL_FILE_STEM = "time_to_dispatch"
SHA256_METADATA_KEY = "sha256"
PICKLE_PROTOCOL = 4
# Keys dated later than now plus this are ignored: clocks differ a little, never by hours.
CLOCK_SKEW_ALLOWANCE = timedelta(hours=1)
# A usual week's CSV is about 21 KB and the largest benchmarked (100,000 rows) about 2 MB; a
# file beyond this is not a week of orders, and is refused before it is read into memory.
MAX_DATASET_BYTES = 32 * 2**20
# The S3 time budget: each call waits at most S3_CONNECT_TIMEOUT_SECONDS for a connection and
# S3_READ_TIMEOUT_SECONDS for each read, S3_MAX_ATTEMPTS times, with botocore's standard
# retry mode (exponential backoff with jitter: at most 1 + 2 + 4 s between the 4 attempts).
# One call that never gets an answer fails after at most 4 x (3 + 18) + 7 = 91 s: inside
# the serve stage's 120 s start-up and the train stage's 180 s. Yet 503 SlowDown three
# times or a reset connection is retried, and the attempts span 4 x 18 = 72 s, so a 70 s
# stall is ridden out. docs/reliability.md has the arithmetic; `worst_case_s3_call_seconds`
# computes it. The environment variables of the same names override them, for tests only.
S3_CONNECT_TIMEOUT_SECONDS = 3.0
S3_READ_TIMEOUT_SECONDS = 18.0
S3_MAX_ATTEMPTS = 4
# botocore's standard retry mode waits at most 2 ** (n - 1) s, capped at 20 s, before retry n.
_MAX_BACKOFF_SECONDS = 20.0

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

# What a model artefact may be made of: the project's containers, the estimator and the
# numpy and datetime pieces their pickles name. Anything else is refused before it is built.
_ALLOWED_GLOBALS = frozenset(
    {
        ("pipeline.artefact.model", "Model"),
        ("pipeline.artefact.model", "TaskMetrics"),
        ("pipeline.artefact.model", "DatasetLineage"),
        ("pipeline.artefact.model", "MonotonicityReport"),
        ("pipeline.artefact.model", "ProductMonotonicity"),
        ("pipeline.artefact.features", "ProductCodeEncoding"),
        ("sklearn.tree._classes", "DecisionTreeRegressor"),
        ("sklearn.tree._tree", "Tree"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("datetime", "datetime"),
        ("datetime", "timezone"),
        ("datetime", "timedelta"),
    }
)
# Where the project's classes were before `pipeline/` had folders: artefacts pickled then name
# them so, and keep loading as the same classes.
_FORMER_PATHS = {
    **{("pipeline.model", name): ("pipeline.artefact.model", name)
       for name in ("Model", "TaskMetrics", "DatasetLineage", "MonotonicityReport", "ProductMonotonicity")},
    ("pipeline.features", "ProductCodeEncoding"): ("pipeline.artefact.features", "ProductCodeEncoding"),
}


class StorageError(Exception):
    """Something about the bucket or an object in it is not as the pipeline needs it."""


class NoSuchBucketError(StorageError):
    """The bucket does not exist."""


class AccessDeniedError(StorageError):
    """The credentials may not do what was asked."""


class NoObjectsError(StorageError):
    """No object under the prefix has a key with a parsable timestamp."""


class DatasetReadError(StorageError):
    """A dataset object could not be read as CSV."""


class ArtefactError(StorageError):
    """A model artefact failed its integrity check or is not a Model."""


class UnknownModelError(StorageError):
    """No model artefact matches the artefact id or key given."""


class AmbiguousModelError(StorageError):
    """More than one model artefact matches the artefact id given."""


@dataclass(frozen=True)
class Dataset:
    """A versioned dataset: the data and exactly which S3 object it came from."""

    data: pd.DataFrame
    bucket: str
    key: str
    timestamp: datetime
    etag: str
    version_id: Optional[str]

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class StoredObject(NamedTuple):
    """A listed object whose key carries a timestamp."""

    key: str
    timestamp: datetime


def s3_client() -> Any:
    """A boto3 S3 client configured from the standard AWS environment variables, with the
    pipeline's timeouts and retries (see S3_READ_TIMEOUT_SECONDS)."""
    config = Config(
        connect_timeout=_setting("S3_CONNECT_TIMEOUT_SECONDS", S3_CONNECT_TIMEOUT_SECONDS),
        read_timeout=_setting("S3_READ_TIMEOUT_SECONDS", S3_READ_TIMEOUT_SECONDS),
        retries={"mode": "standard", "total_max_attempts": int(_setting("S3_MAX_ATTEMPTS", S3_MAX_ATTEMPTS))},
    )
    return boto3.client("s3", config=config)


def worst_case_s3_call_seconds(
    connect_timeout: float = S3_CONNECT_TIMEOUT_SECONDS,
    read_timeout: float = S3_READ_TIMEOUT_SECONDS,
    attempts: int = S3_MAX_ATTEMPTS,
) -> float:
    """The longest one S3 call can take before it fails: every attempt waits out both timeouts
    (a slow connection, then no answer), with the most backoff between attempts."""
    backoff = sum(min(2.0 ** (retry - 1), _MAX_BACKOFF_SECONDS) for retry in range(1, attempts))
    return attempts * (connect_timeout + read_timeout) + backoff


def _setting(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise StorageError(f"{name} must be a number of seconds or attempts, got {quote(raw)}") from None
    if not 0 < value < 3600:
        raise StorageError(f"{name} must be in (0, 3600), got {value}")
    return value


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
    return f"{DATASETS_PREFIX}{DATASET_FILE_STEM}_{_utc(timestamp):%Y-%m-%dT%H:%M:%S}.csv"


def model_key(model: Model) -> str:
    """The key of a model artefact: creation time to the microsecond plus the artefact id."""
    stamp = f"{_utc(model.created_at):%Y-%m-%dT%H:%M:%S.%f}Z"
    return f"{MODELS_PREFIX}{MODEL_FILE_STEM}_{stamp}_{model.artefact_id}.pkl"


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
    return f"{REPORTS_PREFIX}{artefact_file_stem(model_key(model))}/"


def list_timestamped_objects(
    bucket: str, prefix: str, suffix: str, client: Any = None
) -> Iterator[StoredObject]:
    """Every object under `prefix` ending in `suffix` whose key has a timestamp, all pages.

    Raises:
        NoSuchBucketError, AccessDeniedError, StorageError: naming the bucket and prefix.

    Keys dated after now + CLOCK_SKEW_ALLOWANCE, and keys whose timestamp is not a real date,
    are skipped with a WARNING naming them.
    """
    client = client or s3_client()
    paginator = client.get_paginator("list_objects_v2")
    latest_allowed = datetime.now(timezone.utc) + CLOCK_SKEW_ALLOWANCE
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
                        f"plus {CLOCK_SKEW_ALLOWANCE.total_seconds() / 3600:g} h; a mistyped or future date "
                        "must not become the newest"
                    )
                    continue
                yield StoredObject(key, stamp)
    except (ClientError, BotoCoreError) as error:
        raise _storage_error(error, bucket, prefix, "list") from error


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


def get_latest_dataset(
    bucket: str, prefix: str = DATASETS_PREFIX, client: Any = None, max_bytes: int = MAX_DATASET_BYTES
) -> Dataset:
    """Download the newest CSV dataset under `prefix` with its version information.

    The CSV is parsed strictly: every row must have as many fields as the header.

    Raises:
        NoObjectsError: no dataset under the prefix.
        DatasetReadError: the newest object is larger than `max_bytes` (refused before it is
            read), or is not readable CSV, or a row has more or fewer fields than the header.
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed.
    """
    client = client or s3_client()
    newest = latest_object(bucket, prefix, ".csv", client)
    uri = f"s3://{bucket}/{newest.key}"
    body, response = _get_object(client, bucket, newest.key, max_bytes)
    data = read_csv_strictly(body, uri)
    return Dataset(
        data=data,
        bucket=bucket,
        key=newest.key,
        timestamp=newest.timestamp,
        etag=response["ETag"].strip('"'),
        version_id=_version_id(response),
    )


def get_dataset_version(bucket: str, key: str, version_id: Optional[str], client: Any = None) -> Dataset:
    """Download one exact version of a dataset (the newest when `version_id` is None), e.g. the
    week a model was trained on, as its lineage names it.

    Raises:
        DatasetReadError: the object is not readable CSV.
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed (no such
            key or version).
    """
    client = client or s3_client()
    extra = {"VersionId": version_id} if version_id else {}
    try:
        response = client.get_object(Bucket=bucket, Key=key, **extra)
        body = response["Body"].read()
    except (ClientError, BotoCoreError) as error:
        raise _storage_error(error, bucket, key, "read") from error
    data = read_csv_strictly(body, f"s3://{bucket}/{key}")
    stamp = parse_key_timestamp(key) or datetime.fromtimestamp(0, timezone.utc)
    return Dataset(data, bucket, key, stamp, response["ETag"].strip('"'), _version_id(response))


def read_csv_strictly(body: bytes, uri: str) -> pd.DataFrame:
    """Parse a dataset's bytes as UTF-8 CSV, refusing any row with more fields than the header.

    pandas would take extra fields in the first row as index columns: a trailing comma on
    every row shifts every column by one, and 200,000 extra commas make a 200,000-level index
    that takes minutes. A scan with the csv module first names the first such line at once.

    Raises:
        DatasetReadError: naming the line and both field counts, or why the bytes are not CSV.
    """
    try:
        reader = csv.reader(io.TextIOWrapper(io.BytesIO(body), encoding="utf-8", newline=""))
        header = next(reader, [])
        for row in reader:
            if len(row) > len(header):
                hint = "; a trailing comma?" if len(row) == len(header) + 1 and row[-1] == "" else ""
                raise DatasetReadError(
                    f"{uri}: line {reader.line_num} has {len(row)} fields, more than the header's "
                    f"{len(header)}{hint}"
                )
        return pd.read_csv(io.BytesIO(body), index_col=False)
    except (csv.Error, ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise DatasetReadError(f"{uri}: not readable as CSV: {quote(str(error))}") from error


def put_dataset(bucket: str, data: pd.DataFrame, timestamp: datetime, client: Any = None) -> str:
    """Upload a frame as CSV under the dataset key for `timestamp` (tests, local run, demos).

    Returns:
        The key written.
    """
    client = client or s3_client()
    key = dataset_key(timestamp)
    try:
        client.put_object(Bucket=bucket, Key=key, Body=data.to_csv(index=False).encode("utf-8"))
    except (ClientError, BotoCoreError) as error:
        raise _storage_error(error, bucket, key, "write") from error
    return key


def put_model(bucket: str, model: Model, client: Any = None, keys: Optional[SigningKeys] = None) -> str:
    """Persist a model artefact under a new timestamped key, signed; never overwrites.

    The SHA-256 of the pickled bytes and their signature under the current signing key (with
    the key's id) go into the object's metadata. The write is conditional
    (`If-None-Match: *`), so even two runs that picked the same key cannot replace each
    other's artefact.

    Args:
        keys: the signing keys; read from MODEL_SIGNING_KEY when not given.

    Returns:
        The key written; also set as `model.artefact_key`.

    Raises:
        SigningKeyError: no signing key given and MODEL_SIGNING_KEY unset or malformed.
        ArtefactError: if an object already exists at the key.
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed.
    """
    keys = keys or load_signing_keys()
    client = client or s3_client()
    key = model_key(model)
    model.artefact_key = key
    body = pickle.dumps(model, protocol=PICKLE_PROTOCOL)
    digest = hashlib.sha256(body).hexdigest()
    _put_new_object(client, bucket, key, body, ArtefactError("an artefact"),
                    Metadata={SHA256_METADATA_KEY: digest, **keys.sign(body).metadata()})
    return key


def get_model(bucket: str, key: str, client: Any = None, keys: Optional[SigningKeys] = None) -> Model:
    """Load one model artefact by key, verifying checksum, signature, contents and structure.

    Nothing is unpickled before the checksum and the signature are verified, and nothing
    predicts with a model whose estimator fails `check_model_structure`.

    Args:
        keys: the keys that verify; read from MODEL_SIGNING_KEY when not given.

    Raises:
        SigningKeyError: no keys given and MODEL_SIGNING_KEY unset or malformed.
        ArtefactError: checksum missing or wrong, unsigned or wrongly signed, forbidden
            classes, not a Model, or a malformed estimator.
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed.
    """
    keys = keys or load_signing_keys()
    client = client or s3_client()
    uri = f"s3://{bucket}/{key}"
    body, response = _get_object(client, bucket, key)
    metadata = response.get("Metadata", {})
    expected = metadata.get(SHA256_METADATA_KEY)
    if not expected:
        raise ArtefactError(f"{uri}: no SHA-256 checksum in its metadata; refusing to load it")
    actual = hashlib.sha256(body).hexdigest()
    if actual != expected:
        raise ArtefactError(
            f"{uri}: SHA-256 of the artefact is {actual}, its metadata says {quote(expected)}; "
            "the artefact was altered or corrupted, refusing to load it"
        )
    try:
        keys.verify(body, metadata)
    except SignatureError as error:
        raise ArtefactError(f"{uri}: {error}; refusing to load it") from None
    try:
        model = _RestrictedUnpickler(io.BytesIO(body)).load()
    except ArtefactError as error:
        raise ArtefactError(f"{uri}: {error}") from None
    except Exception as error:  # any failure to rebuild the object means an unusable artefact
        raise ArtefactError(f"{uri}: cannot unpickle the artefact: {error!r}") from error
    if not isinstance(model, Model):
        raise ArtefactError(f"{uri}: the artefact is a {type(model).__name__}, not a Model")
    try:
        check_model_structure(model)
    except InvalidModelError as error:
        raise ArtefactError(f"{uri}: malformed model: {error}; refusing to load it") from None
    except Exception as error:  # a state no trained model has may fail in any way: still refused
        raise ArtefactError(f"{uri}: malformed model: {error!r}; refusing to load it") from None
    model.artefact_key = key
    return model


# --- reports: what each training run found ----------------------------------------------


def put_report(bucket: str, prefix: str, files: Dict[str, bytes], client: Any = None) -> List[str]:
    """Write a run's report files under `prefix` (in `reports/`); never overwrites.

    Args:
        prefix: the report's folder, from `report_prefix`.
        files: file name -> bytes; names end in .json, .png or .html.

    Returns:
        The keys written, in the order given.

    Raises:
        ValueError: the prefix is not under reports/ or a file type is not a report's.
        StorageError: S3 refused or failed, or a file already exists at a key.
    """
    if not prefix.startswith(REPORTS_PREFIX) or not prefix.endswith("/"):
        raise ValueError(f"a report folder must be under {REPORTS_PREFIX} and end in '/', got {prefix!r}")
    client = client or s3_client()
    keys = []
    for name, body in files.items():
        content_type = REPORT_CONTENT_TYPES.get("." + name.rsplit(".", 1)[-1].lower())
        if "/" in name or content_type is None:
            raise ValueError(f"{name!r} is not a report file name (.json, .png or .html, no folder)")
        key = prefix + name
        try:
            client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, IfNoneMatch="*")
        except ClientError as error:
            if _error_code(error) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise StorageError(f"s3://{bucket}/{key}: a report file already exists at this key") from error
            raise _storage_error(error, bucket, key, "write") from error
        except BotoCoreError as error:
            raise _storage_error(error, bucket, key, "write") from error
        keys.append(key)
    return keys


def get_report_html(bucket: str, model: Model, client: Any = None) -> Optional[bytes]:
    """The HTML report its lineage names, or None for a model that has none (made before
    reports existed) or whose report object is missing.

    Raises:
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed otherwise.
    """
    if not model.report_key:
        return None
    client = client or s3_client()
    try:
        return bytes(client.get_object(Bucket=bucket, Key=model.report_key)["Body"].read())
    except ClientError as error:
        if _error_code(error) in ("NoSuchKey", "404"):
            log.warning(f"model {model.artefact_id} names the report s3://{bucket}/{model.report_key}, "
                        "which does not exist")
            return None
        raise _storage_error(error, bucket, model.report_key, "read") from error
    except BotoCoreError as error:
        raise _storage_error(error, bucket, model.report_key, "read") from error


def get_report_file(bucket: str, model: Model, name: str, client: Any = None) -> bytes:
    """One file of a model's report folder (e.g. report.json), by name.

    Raises:
        StorageError: the model has no report, or S3 refused or failed (no such file).
    """
    if not model.report_key:
        raise StorageError(f"model {model.artefact_id} has no report (made before reports existed)")
    client = client or s3_client()
    body, _ = _get_object(client, bucket, model.report_key.rsplit("/", 1)[0] + "/" + name)
    return body


def list_report_keys(bucket: str, model_key_: str, client: Any = None) -> List[str]:
    """The keys in the report folder of a model artefact (empty if it has no report).

    Raises:
        NoSuchBucketError, AccessDeniedError, StorageError: if the listing fails.
    """
    client = client or s3_client()
    prefix = f"{REPORTS_PREFIX}{artefact_file_stem(model_key_)}/"
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))
    except (ClientError, BotoCoreError) as error:
        raise _storage_error(error, bucket, prefix, "list") from error


def aws_identity() -> Optional[str]:
    """Who the AWS credentials belong to (the ARN from STS), or None when STS cannot say.

    The registry records it with every status change.
    """
    try:
        return str(boto3.client("sts").get_caller_identity()["Arn"])
    except (ClientError, BotoCoreError, KeyError):
        return None


# --- the registry: which models are rejected ---------------------------------------------


@dataclass(frozen=True)
class StatusChange:
    """One change of a model's status in the registry: who rejected or restored it, when, why."""

    artefact_key: str
    action: str
    reason: str
    who: str
    at: datetime

    def to_json(self) -> Dict[str, str]:
        return {"artefact_key": self.artefact_key, "action": self.action, "reason": self.reason,
                "who": self.who, "at": _utc(self.at).isoformat()}

    @classmethod
    def from_json(cls, value: Dict[str, Any]) -> "StatusChange":
        """Raises: KeyError, ValueError, TypeError for a malformed record."""
        action = str(value["action"])
        if action not in STATUS_ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        return cls(str(value["artefact_key"]), action, str(value["reason"]), str(value["who"]),
                   _utc(datetime.fromisoformat(str(value["at"]))))


def status_change_key(change: StatusChange) -> str:
    """Where a status change is recorded: a folder per artefact, a file per change."""
    stem = artefact_file_stem(change.artefact_key)
    return f"{REGISTRY_PREFIX}{stem}/{_utc(change.at):%Y-%m-%dT%H:%M:%S.%f}Z_{change.action}.json"


def put_status_change(bucket: str, change: StatusChange, client: Any = None) -> str:
    """Record a status change under a new key; never overwrites (conditional write).

    Returns:
        The key written.

    Raises:
        StorageError: S3 refused or failed, or a record already exists at the key.
    """
    client = client or s3_client()
    key = status_change_key(change)
    body = json.dumps(change.to_json(), sort_keys=True).encode("utf-8")
    _put_new_object(client, bucket, key, body, StorageError("a status change"), ContentType="application/json")
    return key


def list_status_changes(bucket: str, client: Any = None) -> Dict[str, List[StatusChange]]:
    """Every recorded status change, by artefact key, oldest first.

    Raises:
        StorageError: S3 failed, or a record is not a status change (naming its key).
    """
    client = client or s3_client()
    changes: Dict[str, List[StatusChange]] = {}
    for item in list_timestamped_objects(bucket, REGISTRY_PREFIX, ".json", client):
        body, _ = _get_object(client, bucket, item.key)
        try:
            change = StatusChange.from_json(json.loads(body))
        except (ValueError, KeyError, TypeError) as error:
            raise StorageError(f"s3://{bucket}/{item.key}: not a status change record: {error}") from error
        changes.setdefault(change.artefact_key, []).append(change)
    for history in changes.values():
        history.sort(key=lambda change: change.at)
    return changes


def rejected_model_keys(bucket: str, client: Any = None) -> Set[str]:
    """The artefact keys whose latest status change is a rejection."""
    return {key for key, history in list_status_changes(bucket, client).items() if history[-1].action == REJECT}


def list_models(bucket: str, client: Any = None) -> List[StoredObject]:
    """Every model artefact under `models/` with a timestamp in its key, newest first.

    Raises:
        NoSuchBucketError, AccessDeniedError, StorageError: if the listing fails.
    """
    models = list(list_timestamped_objects(bucket, MODELS_PREFIX, ".pkl", client))
    return sorted(models, key=lambda item: (item.timestamp, item.key), reverse=True)


def live_model_object(bucket: str, before: Optional[datetime] = None, client: Any = None) -> StoredObject:
    """The live model: the newest model artefact that is not rejected (created before `before`).

    This is the one definition of "newest model" that the serve stage, the champion selection
    and batch scoring use.

    Raises:
        NoObjectsError: no model artefact, or every one is rejected (or newer than `before`).
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed.
    """
    client = client or s3_client()
    models = list_models(bucket, client)
    rejected = rejected_model_keys(bucket, client) if models else set()
    live = live_model_among(models, rejected, before)
    if live is not None:
        return live
    when = f" created before {_utc(before).isoformat()}" if before is not None else ""
    if not models:
        raise NoObjectsError(f"s3://{bucket}/{MODELS_PREFIX}: no .pkl object with a timestamp in its key")
    raise NoObjectsError(
        f"s3://{bucket}/{MODELS_PREFIX}: no model{when} that is not rejected "
        f"({len(models)} artefact(s), {len(rejected)} rejected)"
    )


def resolve_model_key(bucket: str, model: str, client: Any = None, keys: Optional[List[str]] = None) -> str:
    """The key of the one model artefact that `model` names: its key (with or without
    `s3://BUCKET/`), its artefact id (the lineage's `artefact_id`, the key's last `_xxxxxxxx`
    part), or a start of its id at least MIN_ID_PREFIX characters long. The registry CLI and
    batch scoring name models this one way. Rejected models resolve too: naming one is a
    deliberate choice.

    Args:
        keys: the model keys to choose from, if already listed; else `models/` is listed.

    Raises:
        UnknownModelError: nothing under `models/` has that key or artefact id.
        AmbiguousModelError: several artefacts match (naming each key).
        NoSuchBucketError, AccessDeniedError, StorageError: if the listing fails.
    """
    ref = model.strip()
    if not ref:
        raise UnknownModelError("MODEL is empty: give an artefact id or a key under models/")
    keys = [item.key for item in list_models(bucket, client)] if keys is None else keys
    key = ref[len(f"s3://{bucket}/"):] if ref.startswith(f"s3://{bucket}/") else ref
    for matches in (
        [k for k in keys if k == key],
        [k for k in keys if artefact_id_of_key(k) == ref],
        [k for k in keys if len(ref) >= MIN_ID_PREFIX and artefact_id_of_key(k).startswith(ref)],
    ):
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise AmbiguousModelError(
                f"MODEL {model!r} is ambiguous in s3://{bucket}/{MODELS_PREFIX}: it matches "
                f"{len(matches)} artefacts ({', '.join(sorted(matches))}); give the full key"
            )
    raise UnknownModelError(
        f"MODEL {model!r} is not an artefact id or key in s3://{bucket}/{MODELS_PREFIX} "
        f"({len(keys)} model(s); `python -m pipeline.registry {bucket} list` shows them)"
    )


def live_model_among(
    models: List[StoredObject], rejected: Set[str], before: Optional[datetime] = None
) -> Optional[StoredObject]:
    """`live_model_object`'s choice from models listed newest first (`list_models`) and the
    rejected keys (`rejected_model_keys`): lets the backfill list the bucket once for every week.
    """
    for item in models:
        if item.key not in rejected and (before is None or item.timestamp < _utc(before)):
            return item
    return None


def get_live_model(bucket: str, before: Optional[datetime] = None, client: Any = None) -> Model:
    """Load the live model (see `live_model_object`), verified, with `artefact_key` set.

    Raises:
        NoObjectsError: no model to serve.
        ArtefactError: checksum missing or wrong, forbidden classes, or not a Model.
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed.
    """
    client = client or s3_client()
    return get_model(bucket, live_model_object(bucket, before, client).key, client)


# --- streaming objects in and out: batch scoring ----------------------------------------

# S3's smallest part of a multipart upload, except the last one.
MIN_PART_BYTES = 5 * 2**20
DEFAULT_PART_BYTES = 8 * 2**20
DEFAULT_READ_BYTES = 2**20


class ObjectStream(NamedTuple):
    """An object being read: its body as a binary file that reads bounded chunks from S3."""

    body: "io.BufferedReader[Any]"  # a string: generic in the type stubs only, not at run time
    key: str
    etag: str
    version_id: Optional[str]
    size: int


class _BodyReader(io.RawIOBase):
    """botocore's streaming body as a raw binary file; S3 failures become StorageError."""

    def __init__(self, body: Any, bucket: str, key: str) -> None:
        self._body, self._bucket, self._key = body, bucket, key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._body.read(len(buffer))
        except (ClientError, BotoCoreError, OSError) as error:
            raise _storage_error(error, self._bucket, self._key, "read") from error
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()


def open_object_stream(
    bucket: str, key: str, client: Any = None, read_bytes: int = DEFAULT_READ_BYTES
) -> ObjectStream:
    """Open an object for reading in chunks of at most `read_bytes`: memory does not grow with it.

    Raises:
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused (no such object...).
    """
    client = client or s3_client()
    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as error:
        raise _storage_error(error, bucket, key, "read") from error
    body = io.BufferedReader(_BodyReader(response["Body"], bucket, key), buffer_size=read_bytes)
    return ObjectStream(body, key, response["ETag"].strip('"'), _version_id(response),
                        int(response.get("ContentLength", 0)))


class MultipartWriter:
    """Writes one object by multipart upload; the object appears only when `complete` succeeds.

    Bytes are buffered into parts of `part_bytes` (at least S3's 5 MiB; the last part may be
    smaller). A full part is sent by a background thread while the caller goes on producing
    the next one; at most one part is in flight, so memory stays within about three parts.
    Any failure, or leaving the `with` block without `complete`, aborts the upload, so S3
    keeps no parts and no partial object: running again is safe.

        with MultipartWriter(bucket, key, metadata={...}) as out:
            out.write(b"...")
            out.complete()
    """

    def __init__(
        self,
        bucket: str,
        key: str,
        content_type: str = "text/csv",
        metadata: Optional[Dict[str, str]] = None,
        client: Any = None,
        part_bytes: int = DEFAULT_PART_BYTES,
    ) -> None:
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"parts must be at least {MIN_PART_BYTES} bytes, got {part_bytes}")
        self.bucket, self.key, self.part_bytes = bucket, key, part_bytes
        self.metadata = dict(metadata or {})
        self.bytes_written = 0
        self._client = client or s3_client()
        self._content_type = content_type
        self._buffer = bytearray()
        self._parts: List[Dict[str, Any]] = []
        self._upload_id: Optional[str] = None
        self._completed = False
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="multipart")
        self._in_flight: Optional["Future[None]"] = None

    def __enter__(self) -> "MultipartWriter":
        self._upload_id = self._call("start an upload of", self._client.create_multipart_upload,
                                     ContentType=self._content_type, Metadata=self.metadata)["UploadId"]
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._completed:
            self.abort()
        self._sender.shutdown(wait=True)

    def write(self, data: bytes) -> None:
        """Add bytes to the object; a full part is uploaded as soon as there is one."""
        self._buffer += data
        self.bytes_written += len(data)
        if len(self._buffer) >= self.part_bytes:
            self._upload_part()

    def complete(self) -> str:
        """Upload what is buffered and make the object appear. Returns its version id (or "").

        Raises:
            StorageError: S3 refused or failed; the upload is aborted, nothing is left behind.
        """
        try:
            if self._buffer or not self._parts:
                self._upload_part()
            self._wait_for_part()
            response = self._call("complete", self._client.complete_multipart_upload,
                                  UploadId=self._upload_id, MultipartUpload={"Parts": self._parts})
        except StorageError:
            self.abort()
            raise
        self._completed = True
        return _version_id(response) or ""

    def abort(self) -> None:
        """Abort the upload, dropping every part; a failure to abort is logged, not raised."""
        if self._upload_id is None or self._completed:
            return
        try:
            self._wait_for_part()
        except StorageError:
            pass  # the part failed: the upload is aborted all the same
        upload_id, self._upload_id = self._upload_id, None
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)
        except (ClientError, BotoCoreError) as error:
            log.warning(f"s3://{self.bucket}/{self.key}: could not abort multipart upload {upload_id}: {error}")

    def _upload_part(self) -> None:
        """Hand the buffer to the sender as the next part, once the part before is sent."""
        if self._upload_id is None:
            raise StorageError(f"s3://{self.bucket}/{self.key}: the upload is not open")
        self._wait_for_part()
        number = len(self._parts) + 1
        part = {"PartNumber": number, "ETag": ""}
        self._parts.append(part)
        body, self._buffer = bytes(self._buffer), bytearray()
        self._in_flight = self._sender.submit(self._send_part, part, self._upload_id, body)

    def _send_part(self, part: Dict[str, Any], upload_id: str, body: bytes) -> None:
        response = self._call("upload a part of", self._client.upload_part, UploadId=upload_id,
                              PartNumber=part["PartNumber"], Body=body)
        part["ETag"] = response["ETag"]

    def _wait_for_part(self) -> None:
        """Raises the StorageError of the part in flight, if it failed."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.result()

    def _call(self, action: str, method: Any, **kwargs: Any) -> Any:
        try:
            return method(Bucket=self.bucket, Key=self.key, **kwargs)
        except (ClientError, BotoCoreError) as error:
            raise _storage_error(error, self.bucket, self.key, action) from error


class ObjectInfo(NamedTuple):
    """What a HEAD request tells about an object."""

    etag: str
    metadata: Dict[str, str]


def object_info(bucket: str, key: str, client: Any = None) -> Optional[ObjectInfo]:
    """An object's ETag and user metadata, or None if there is no object at `key`.

    Raises:
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed otherwise.
    """
    client = client or s3_client()
    try:
        response = client.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if _error_code(error) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise _storage_error(error, bucket, key, "read") from error
    except BotoCoreError as error:
        raise _storage_error(error, bucket, key, "read") from error
    return ObjectInfo(response["ETag"].strip('"'), dict(response.get("Metadata", {})))


def get_json_object(bucket: str, key: str, client: Any = None) -> Optional[Any]:
    """A JSON object's value, or None if there is no object at `key`.

    Raises:
        StorageError: S3 failed, or the object is not JSON (naming its key).
    """
    client = client or s3_client()
    if object_info(bucket, key, client) is None:
        return None
    body, _ = _get_object(client, bucket, key)
    try:
        return json.loads(body)
    except ValueError as error:
        raise StorageError(f"s3://{bucket}/{key}: not JSON: {error}") from error


def put_object_bytes(bucket: str, key: str, body: bytes, content_type: str, client: Any = None) -> str:
    """Write a small object (a report, a plot) in one request. Returns the key.

    Raises:
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed.
    """
    client = client or s3_client()
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
    except (ClientError, BotoCoreError) as error:
        raise _storage_error(error, bucket, key, "write") from error
    return key


def delete_object(bucket: str, key: str, client: Any = None) -> None:
    """Delete an object (in a versioned bucket: hide it behind a delete marker).

    Raises:
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed.
    """
    client = client or s3_client()
    try:
        client.delete_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as error:
        raise _storage_error(error, bucket, key, "delete") from error


def list_datasets(bucket: str, client: Any = None) -> List[StoredObject]:
    """Every dataset under `datasets/` with a timestamp in its key, oldest first.

    Raises:
        NoSuchBucketError, AccessDeniedError, StorageError: if the listing fails.
    """
    datasets = list(list_timestamped_objects(bucket, DATASETS_PREFIX, ".csv", client))
    return sorted(datasets, key=lambda item: (item.timestamp, item.key))


def predictions_key(dataset_key: str) -> str:
    """Where the backfill writes a week's estimates: `predictions/<dataset file stem>.csv`."""
    stem = dataset_key.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return f"{PREDICTIONS_PREFIX}{stem}.csv"


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        current = _FORMER_PATHS.get((module, name), (module, name))
        if current not in _ALLOWED_GLOBALS:
            raise ArtefactError(
                f"the pickle names {module}.{name}, which a model artefact may not contain; "
                "refusing to load it"
            )
        return super().find_class(*current)


def _put_new_object(client: Any, bucket: str, key: str, body: bytes, exists: StorageError, **extra: Any) -> None:
    """Write an object only if none exists at the key (`If-None-Match: *`); never overwrites.

    Raises:
        `exists`, with its message completed by the key: an object already exists there.
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed.
    """
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*", **extra)
    except ClientError as error:
        if _error_code(error) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            raise type(exists)(f"s3://{bucket}/{key}: {exists} already exists at this key") from error
        raise _storage_error(error, bucket, key, "write") from error
    except BotoCoreError as error:
        raise _storage_error(error, bucket, key, "write") from error


def _get_object(client: Any, bucket: str, key: str, max_bytes: Optional[int] = None) -> Tuple[bytes, Any]:
    """The object's bytes and the response; with `max_bytes`, a larger object is refused
    from its Content-Length before its body is read (botocore checks that the body read has
    exactly that length).

    Raises:
        DatasetReadError: the object is larger than `max_bytes`.
        StorageError: S3 refused or failed.
    """
    try:
        response = client.get_object(Bucket=bucket, Key=key)
        size = int(response.get("ContentLength", 0))
        if max_bytes is not None and size > max_bytes:
            response["Body"].close()
            raise DatasetReadError(
                f"s3://{bucket}/{key}: the dataset is {size:,} bytes, over the limit of {max_bytes:,} "
                "bytes (MAX_DATASET_BYTES, far above any week of orders); refusing to read it"
            )
        return response["Body"].read(), response
    except (ClientError, BotoCoreError) as error:
        raise _storage_error(error, bucket, key, "read") from error


def _version_id(response: Any) -> Optional[str]:
    version = response.get("VersionId")
    return None if version in (None, "null") else str(version)


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _storage_error(error: Exception, bucket: str, key: str, action: str) -> StorageError:
    uri = f"s3://{bucket}/{key}"
    if isinstance(error, ClientError):
        code = _error_code(error)
        message = error.response.get("Error", {}).get("Message", str(error))
        if code == "NoSuchBucket":
            return NoSuchBucketError(f"s3://{bucket}: bucket does not exist (while trying to {action} {uri})")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return AccessDeniedError(f"{uri}: access denied while trying to {action} it ({code}: {message})")
        if code in ("NoSuchKey", "404"):
            return StorageError(f"{uri}: no such object (while trying to {action} it)")
        return StorageError(f"{uri}: cannot {action} it ({code}: {message})")
    return StorageError(f"{uri}: cannot {action} it: {error}")


def _utc(timestamp: datetime) -> datetime:
    if timestamp.tzinfo is None:
        return timestamp.replace(tzinfo=timezone.utc)
    return timestamp.astimezone(timezone.utc)
