"""Streaming objects in and multipart uploads out, against a real S3 API: bounded reads, parts
sent while the next is made, and nothing left behind by a failure.
"""
from typing import Any, Dict

import pytest

from pipeline.settings import LAYOUT
from pipeline.storage.client import StorageError
from pipeline.storage.multipart import MultipartWriter, open_object_stream


MIB = 2**20


def multipart_uploads(s3: Any, bucket: str) -> list:
    return list(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def object_keys(s3: Any, bucket: str) -> list:
    return [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_object_stream_reads_the_whole_object_in_bounded_chunks(s3: Any, bucket: str) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    s3.put_object(Bucket=bucket, Key="in.bin", Body=body)
    stream = open_object_stream(bucket, "in.bin", read_bytes=64 * 1024)

    chunks = iter(lambda: stream.body.read1(64 * 1024), b"")
    read = [len(chunk) for chunk in chunks]

    assert sum(read) == len(body) and max(read) <= 64 * 1024
    assert stream.size == len(body)


def test_object_stream_of_a_missing_object_is_a_storage_error_naming_it(s3: Any, bucket: str) -> None:
    with pytest.raises(StorageError, match=f"s3://{bucket}/nothing.csv: no such object"):
        open_object_stream(bucket, "nothing.csv")


def test_multipart_writer_writes_parts_and_the_object_appears_on_complete(s3: Any, bucket: str) -> None:
    data = b"x" * (11 * MIB + 123)
    with MultipartWriter(bucket, "out.csv", metadata={LAYOUT.model_id_metadata_key: "abc"},
                                 part_bytes=5 * MIB) as out:
        for start in range(0, len(data), MIB):
            out.write(data[start:start + MIB])
        assert object_keys(s3, bucket) == []
        out.complete()

    whole = s3.get_object(Bucket=bucket, Key="out.csv")
    assert whole["Body"].read() == data
    assert whole["Metadata"] == {LAYOUT.model_id_metadata_key: "abc"}
    assert whole["ETag"].strip('"').endswith("-3")  # a multipart object's ETag counts its parts


def test_a_small_object_is_one_part(s3: Any, bucket: str) -> None:
    with MultipartWriter(bucket, "small.csv") as out:
        out.write(b"a,b\n1,2\n")
        out.complete()

    assert s3.get_object(Bucket=bucket, Key="small.csv")["Body"].read() == b"a,b\n1,2\n"


def test_leaving_without_complete_aborts_and_leaves_nothing(s3: Any, bucket: str) -> None:
    with pytest.raises(RuntimeError):
        with MultipartWriter(bucket, "out.csv", part_bytes=5 * MIB) as out:
            out.write(b"y" * (6 * MIB))
            raise RuntimeError("the scoring failed")

    assert object_keys(s3, bucket) == []
    assert multipart_uploads(s3, bucket) == []


class FailingPartClient:
    """The real client, except that upload_part number `fail_at` fails as S3 would."""

    def __init__(self, client: Any, fail_at: int) -> None:
        self._client, self._fail_at = client, fail_at

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def upload_part(self, **kwargs: Any) -> Dict[str, Any]:
        if kwargs["PartNumber"] == self._fail_at:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "InternalError", "Message": "part lost"}}, "UploadPart")
        return dict(self._client.upload_part(**kwargs))


def test_a_failed_part_upload_aborts_the_upload_and_leaves_no_object(s3: Any, bucket: str) -> None:
    client = FailingPartClient(s3, fail_at=2)
    with pytest.raises(StorageError, match="cannot upload a part of it.*part lost"):
        with MultipartWriter(bucket, "out.csv", client=client, part_bytes=5 * MIB) as out:
            for _ in range(3):
                out.write(b"z" * (5 * MIB))
            out.complete()

    assert object_keys(s3, bucket) == []
    assert multipart_uploads(s3, bucket) == []


def test_parts_smaller_than_s3_allows_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 5242880 bytes"):
        MultipartWriter("bucket", "key", part_bytes=MIB, client=object())
