"""The S3 client and its errors: timeouts and retries, what each S3 failure becomes, and
reading and writing one object.

Every S3 call has connect and read timeouts and a bounded number of attempts in botocore's
standard retry mode (S3.connect_timeout_seconds, S3.read_timeout_seconds, S3.max_attempts):
a hanging S3 fails a stage within its time limit: the S3 time budget, which
`pipeline/settings.py` asserts against the serve stage's start-up limit (the arithmetic is in
docs/reliability.md).
Per-read timeouts do not bound an S3 that answers a byte at a time: each stage also has one
overall S3 deadline inside its limit (`start_s3_deadline`, S3.serve_deadline_seconds and
S3.train_deadline_seconds), after which its S3 work fails with an S3DeadlineError.
Every failure becomes a StorageError naming the object and what was being done to it. An
object is never overwritten where that matters: `put_new_object` writes only where nothing is.

All S3 access is plain boto3; endpoint, region and credentials come from the standard AWS
environment variables (`AWS_ENDPOINT_URL` selects an S3-compatible server).
"""
import json
import signal
import threading
import time
from concurrent.futures import CancelledError
from contextlib import contextmanager
from types import FrameType
from typing import Any, Dict, Iterator, NamedTuple, Optional, Tuple, Type

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from pipeline.settings import ENVIRONMENT, S3, environment_value
from pipeline.utils import quote

# What S3 answers a conditional write (`If-None-Match: *`) when an object exists at the key.
_EXISTS_CODES = ("PreconditionFailed", "412", "ConditionalRequestConflict")


class StorageError(Exception):
    """Something about the bucket or an object in it is not as the pipeline needs it."""


class NoSuchBucketError(StorageError):
    """The bucket does not exist."""


class AccessDeniedError(StorageError):
    """The credentials may not do what was asked."""


class ObjectTooLargeError(StorageError):
    """An object is larger than its reader accepts: refused before its body is read."""

    def __init__(self, uri: str, size: int, limit: int) -> None:
        super().__init__(f"{uri}: the object is {size:,} bytes, over the limit of {limit:,} bytes; refusing to read it")
        self.uri, self.size, self.limit = uri, size, limit


class S3DeadlineError(StorageError, CancelledError):
    """The stage's S3 work was not done by the stage's S3 deadline (`start_s3_deadline`).

    A CancelledError too: botocore passes that through as a cancelled call instead of wrapping
    it as a connection error and retrying (the call is over: its stage has no time left)."""


class _Deadline:
    """A stage's one overall S3 deadline: when it ends, what it is called, how deep in S3 calls
    the main thread is, and the SIGALRM handler it replaced."""

    def __init__(self, name: str, seconds: float) -> None:
        self.name, self.seconds = name, seconds
        self.ends = time.monotonic() + seconds
        self.depth = 0
        self.doing = ""
        self.previous_handler: Any = None

    def error(self) -> S3DeadlineError:
        doing = f" while {self.doing} was running" if self.doing else ""
        return S3DeadlineError(
            f"{self.name}'s S3 deadline of {self.seconds:g} s passed{doing}: S3 answered too slowly for "
            "the stage to end inside its limit")


_deadline: Optional[_Deadline] = None


def start_s3_deadline(name: str, seconds: float) -> None:
    """From now on, the S3 work of this process must end within `seconds` (one deadline for
    the whole stage, not per call): a call still running then is interrupted, and every call
    after it fails at once, with an S3DeadlineError naming the deadline.

    Per-read timeouts do not bound a call whose answer trickles in (a byte every few seconds
    restarts every read timeout), nor the sum of a stage's calls; this does. It is enforced
    with SIGALRM, armed only while the main thread is inside an S3 call, so nothing else the
    stage does (training) is ever interrupted. `S3_DEADLINE_SECONDS` overrides `seconds` (tests).

    Args:
        name: the stage as the error names it ("the serve stage").
        seconds: the deadline, from now (S3.serve_deadline_seconds, S3.train_deadline_seconds).
    """
    global _deadline
    end_s3_deadline()
    deadline = _Deadline(name, _setting(ENVIRONMENT.s3_deadline, seconds))
    if threading.current_thread() is threading.main_thread():
        deadline.previous_handler = signal.signal(signal.SIGALRM, _deadline_passed)
    _deadline = deadline


def end_s3_deadline() -> None:
    """No deadline any more (the stage's S3 work is done); the SIGALRM handler is restored."""
    global _deadline
    deadline, _deadline = _deadline, None
    if deadline is not None and deadline.previous_handler is not None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, deadline.previous_handler)


@contextmanager
def within_s3_deadline(doing: str) -> Iterator[None]:
    """S3 work (a call, reading a body) that must end by the deadline, if one is set.

    Raises:
        S3DeadlineError: the deadline passed before or during the work.
    """
    _enter_s3_call(doing)
    try:
        yield
    finally:
        _leave_s3_call()


def _enter_s3_call(doing: str, **_: Any) -> None:
    deadline = _deadline
    if deadline is None or threading.current_thread() is not threading.main_thread():
        return
    deadline.depth += 1
    if deadline.depth > 1:
        return
    deadline.doing = doing
    left = deadline.ends - time.monotonic()
    if left <= 0:
        deadline.depth -= 1
        raise deadline.error()
    signal.setitimer(signal.ITIMER_REAL, left)


def _leave_s3_call(**_: Any) -> None:
    deadline = _deadline
    if deadline is None or threading.current_thread() is not threading.main_thread() or deadline.depth == 0:
        return
    deadline.depth -= 1
    if deadline.depth == 0:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _deadline_passed(signum: int, frame: Optional[FrameType]) -> None:
    deadline = _deadline
    if deadline is not None and deadline.depth > 0:
        raise deadline.error()


def _before_call(model: Any = None, **_: Any) -> None:
    _enter_s3_call(f"S3 {getattr(model, 'name', 'call')}")


class ObjectInfo(NamedTuple):
    """What a HEAD request tells about an object."""

    etag: str
    metadata: Dict[str, str]


def s3_client() -> Any:
    """A boto3 S3 client configured from the standard AWS environment variables, with the
    pipeline's timeouts and retries (see S3.read_timeout_seconds)."""
    config = Config(
        connect_timeout=_setting(ENVIRONMENT.s3_connect_timeout, S3.connect_timeout_seconds),
        read_timeout=_setting(ENVIRONMENT.s3_read_timeout, S3.read_timeout_seconds),
        retries={"mode": "standard", "total_max_attempts": int(_setting(ENVIRONMENT.s3_max_attempts, S3.max_attempts))},
    )
    client = boto3.client("s3", config=config)
    # Every call, every attempt and backoff included, counts against the stage's S3 deadline.
    client.meta.events.register("before-call.s3", _before_call)
    client.meta.events.register("after-call.s3", _leave_s3_call)
    client.meta.events.register("after-call-error.s3", _leave_s3_call)
    return client


def _setting(name: str, default: float) -> float:
    raw = environment_value(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise StorageError(f"{name} must be a number of seconds or attempts, got {quote(raw)}") from None
    if not 0 < value < 3600:
        raise StorageError(f"{name} must be in (0, 3600), got {value}")
    return value


def get_object_bytes(
    client: Any, bucket: str, key: str, max_bytes: Optional[int] = None, version_id: Optional[str] = None
) -> Tuple[bytes, Any]:
    """The object's bytes (its current version, or `version_id`) and the response; with
    `max_bytes`, a larger object is refused from its Content-Length before its body is read
    (botocore checks that the body read has exactly that length).

    Raises:
        ObjectTooLargeError: the object is larger than `max_bytes`.
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed (no such key
            or version).
    """
    extra = {"VersionId": version_id} if version_id else {}
    try:
        with within_s3_deadline(f"reading s3://{bucket}/{key}"):
            response = client.get_object(Bucket=bucket, Key=key, **extra)
            size = int(response.get("ContentLength", 0))
            if max_bytes is not None and size > max_bytes:
                response["Body"].close()
                raise ObjectTooLargeError(f"s3://{bucket}/{key}", size, max_bytes)
            return response["Body"].read(), response
    except (ClientError, BotoCoreError) as error:
        raise storage_error(error, bucket, key, "read") from error


def put_new_object(
    client: Any, bucket: str, key: str, body: bytes, what: str, exists: Type[StorageError] = StorageError,
    **extra: Any,
) -> None:
    """Write an object only if none exists at the key (`If-None-Match: *`); never overwrites.
    Every write of the pipeline that must not replace anything goes through here.

    Args:
        what: the object, as the error names it ("a report file").
        exists: the error to raise when an object is already at the key.
        extra: more arguments of `put_object` (ContentType, Metadata).

    Raises:
        `exists`: "s3://BUCKET/KEY: <what> already exists at this key".
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed.
    """
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*", **extra)
    except ClientError as error:
        if error_code(error) in _EXISTS_CODES:
            raise exists(f"s3://{bucket}/{key}: {what} already exists at this key") from error
        raise storage_error(error, bucket, key, "write") from error
    except BotoCoreError as error:
        raise storage_error(error, bucket, key, "write") from error


def object_info(bucket: str, key: str, client: Any = None) -> Optional[ObjectInfo]:
    """An object's ETag and user metadata, or None if there is no object at `key`.

    Raises:
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed otherwise.
    """
    client = client or s3_client()
    try:
        response = client.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error_code(error) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise storage_error(error, bucket, key, "read") from error
    except BotoCoreError as error:
        raise storage_error(error, bucket, key, "read") from error
    return ObjectInfo(response["ETag"].strip('"'), dict(response.get("Metadata", {})))


def get_json_object(bucket: str, key: str, client: Any = None) -> Optional[Any]:
    """A JSON object's value, or None if there is no object at `key`.

    Raises:
        StorageError: S3 failed, or the object is not JSON (naming its key).
    """
    client = client or s3_client()
    if object_info(bucket, key, client) is None:
        return None
    body, _ = get_object_bytes(client, bucket, key)
    try:
        return json.loads(body)
    except ValueError as error:
        raise StorageError(f"s3://{bucket}/{key}: not JSON: {error}") from error


def put_object_bytes(
    bucket: str, key: str, body: bytes, content_type: Optional[str] = None, client: Any = None
) -> str:
    """Write a small object (a dataset, a report, a plot) in one request. Returns the key.

    Raises:
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed.
    """
    client = client or s3_client()
    extra = {"ContentType": content_type} if content_type else {}
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, **extra)
    except (ClientError, BotoCoreError) as error:
        raise storage_error(error, bucket, key, "write") from error
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
        raise storage_error(error, bucket, key, "delete") from error


def response_version_id(response: Any) -> Optional[str]:
    """The S3 version id a response names; None in a bucket without versioning."""
    version = response.get("VersionId")
    return None if version in (None, "null") else str(version)


def error_code(error: ClientError) -> str:
    """S3's error code (`NoSuchKey`, `404`, ...) of a failed call."""
    return str(error.response.get("Error", {}).get("Code", ""))


def storage_error(error: Exception, bucket: str, key: str, action: str) -> StorageError:
    """The StorageError a failed S3 call on `key` becomes, saying what was being done to it."""
    uri = f"s3://{bucket}/{key}"
    if isinstance(error, ClientError):
        code = error_code(error)
        message = error.response.get("Error", {}).get("Message", str(error))
        if code == "NoSuchBucket":
            return NoSuchBucketError(f"s3://{bucket}: bucket does not exist (while trying to {action} {uri})")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return AccessDeniedError(f"{uri}: access denied while trying to {action} it ({code}: {message})")
        if code in ("NoSuchKey", "404"):
            return StorageError(f"{uri}: no such object (while trying to {action} it)")
        return StorageError(f"{uri}: cannot {action} it ({code}: {message})")
    return StorageError(f"{uri}: cannot {action} it: {error}")
