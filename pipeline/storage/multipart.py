"""Streaming objects in and out, for batch scoring: reads in bounded chunks
(`open_object_stream`) and multipart uploads (`MultipartWriter`) that are aborted on any
failure or stop, the abort retried for a while, so that a failed run leaves no partial
object and no parts.
"""
import io
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Dict, List, NamedTuple, Optional

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.settings import S3
from pipeline.storage.client import StorageError, error_code, response_version_id, s3_client, storage_error


log = logging.getLogger(__name__)


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
            raise storage_error(error, self._bucket, self._key, "read") from error
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()


def open_object_stream(
    bucket: str, key: str, client: Any = None, read_bytes: int = S3.default_read_bytes
) -> ObjectStream:
    """Open an object for reading in chunks of at most `read_bytes`: memory does not grow with it.

    Raises:
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused (no such object...).
    """
    client = client or s3_client()
    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as error:
        raise storage_error(error, bucket, key, "read") from error
    body = io.BufferedReader(_BodyReader(response["Body"], bucket, key), buffer_size=read_bytes)
    return ObjectStream(body, key, response["ETag"].strip('"'), response_version_id(response),
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
        part_bytes: int = S3.default_part_bytes,
    ) -> None:
        if part_bytes < S3.min_part_bytes:
            raise ValueError(f"parts must be at least {S3.min_part_bytes} bytes, got {part_bytes}")
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

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if not self._completed:
            # A stop (SIGTERM, Ctrl-C) has only Kubernetes' grace period left for the aborts.
            stopping = exc_type is not None and not issubclass(exc_type, Exception)
            self.abort(S3.abort_after_stop_seconds if stopping else S3.abort_retry_seconds)
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
        return response_version_id(response) or ""

    def abort(self, seconds: float = S3.abort_retry_seconds) -> None:
        """Abort the upload, dropping every part; retried for up to `seconds`, with a pause
        doubling from 1 s to 8 s between attempts, since an S3 that just failed a part (a
        stretch of 503 SlowDown) may well fail the abort's own attempts too. A failure to
        abort by then is logged, not raised: the bucket's lifecycle rule for incomplete
        uploads removes what is left (docs/deployment.md)."""
        if self._upload_id is None or self._completed:
            return
        try:
            self._wait_for_part()
        except StorageError:
            pass  # the part failed: the upload is aborted all the same
        upload_id, self._upload_id = self._upload_id, None
        ends, pause = time.monotonic() + seconds, 1.0
        while True:
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)
                return
            except ClientError as error:
                if error_code(error) == "NoSuchUpload":
                    return  # an earlier attempt went through; only its answer was lost
                failure: Exception = error
            except BotoCoreError as error:
                failure = error
            left = ends - time.monotonic()
            if left <= 0:
                log.warning(f"s3://{self.bucket}/{self.key}: could not abort multipart upload {upload_id} "
                            f"within {seconds:g} s: {failure}; the bucket's lifecycle rule for incomplete "
                            "uploads removes its parts")
                return
            time.sleep(min(pause, left))
            pause = min(2 * pause, 8.0)

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
            raise storage_error(error, self.bucket, self.key, action) from error
