"""The S3 client against a real S3 API: its timeouts and retries, and reading and writing one
object.
"""
from typing import Any, Dict

import pytest

from pipeline.settings import S3
from pipeline.storage.client import (
    ObjectTooLargeError,
    StorageError,
    get_object_bytes,
    object_info,
    put_new_object,
    s3_client,
)
from pipeline.storage.datasets import DatasetReadError


def test_the_s3_client_has_the_pipelines_timeouts_and_standard_retries(s3_env: Dict[str, str]) -> None:
    config = s3_client().meta.config

    assert (config.connect_timeout, config.read_timeout) == (
        S3.connect_timeout_seconds, S3.read_timeout_seconds
    )
    assert config.retries == {"mode": "standard", "total_max_attempts": S3.max_attempts}


def test_object_info_of_a_missing_object_is_none(s3: Any, bucket: str) -> None:
    assert object_info(bucket, "predictions/none.csv") is None


def test_a_read_over_its_size_limit_is_refused_unread_as_too_large_not_as_a_dataset(s3: Any, bucket: str) -> None:
    key = "reports/some-run/report.json"
    s3.put_object(Bucket=bucket, Key=key, Body=b"x" * 2000)

    with pytest.raises(ObjectTooLargeError) as refused:
        get_object_bytes(s3, bucket, key, max_bytes=1000)

    assert str(refused.value) == (
        f"s3://{bucket}/{key}: the object is 2,000 bytes, over the limit of 1,000 bytes; refusing to read it"
    )
    assert (refused.value.size, refused.value.limit) == (2000, 1000)
    assert not isinstance(refused.value, DatasetReadError)


def test_a_conditional_write_never_overwrites_and_names_what_is_there(s3: Any, bucket: str) -> None:
    key = "reports/some-run/report.json"
    put_new_object(s3, bucket, key, b"first", "a report file")

    with pytest.raises(StorageError, match=f"^s3://{bucket}/{key}: a report file already exists at this key$"):
        put_new_object(s3, bucket, key, b"second", "a report file")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"first"
