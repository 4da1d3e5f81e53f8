"""Weekly datasets against a real S3 API: versions, strict CSV parsing, the size limit, and S3's
refusals named.
"""
import hashlib
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any, Iterator

import pandas as pd
import pytest

from pipeline.local.local_s3 import create_bucket
from pipeline.local.synthetic import generate_orders
from pipeline.settings import ENVIRONMENT, LOCAL, S3
from pipeline.storage.client import AccessDeniedError, NoSuchBucketError
from pipeline.storage.datasets import DatasetReadError, get_latest_dataset, put_dataset
from tests.helpers import free_port, put_csv


def test_get_latest_dataset_records_etag_and_version_id(s3: Any, bucket: str) -> None:
    put = put_csv(s3, bucket, "datasets/time_to_dispatch_2021-07-01T23:00:00.csv", generate_orders(20, seed=1))

    dataset = get_latest_dataset(bucket)

    assert dataset.etag == hashlib.md5(put["body"]).hexdigest()
    assert dataset.version_id == put["VersionId"]
    assert dataset.timestamp == datetime(2021, 7, 1, 23, 0, tzinfo=timezone.utc)
    assert dataset.uri == f"s3://{bucket}/datasets/time_to_dispatch_2021-07-01T23:00:00.csv"


def test_get_latest_dataset_reads_the_current_version_of_an_overwritten_key(s3: Any, bucket: str) -> None:
    key = "datasets/time_to_dispatch_2021-07-01T23:00:00.csv"
    put_csv(s3, bucket, key, generate_orders(20, seed=1))
    second = put_csv(s3, bucket, key, generate_orders(30, seed=2))

    dataset = get_latest_dataset(bucket)

    assert dataset.version_id == second["VersionId"]
    assert len(dataset.data) == 30


def test_get_latest_dataset_in_an_unversioned_bucket_has_no_version_id(s3: Any) -> None:
    bucket = create_bucket(s3, versioned=False)
    put_csv(s3, bucket, "datasets/time_to_dispatch_2021-07-01T23:00:00.csv", generate_orders(20, seed=1))

    assert get_latest_dataset(bucket).version_id is None


def test_get_latest_dataset_from_a_missing_bucket_names_the_bucket(s3: Any) -> None:
    with pytest.raises(NoSuchBucketError, match="s3://ttd-no-such-bucket: bucket does not exist"):
        get_latest_dataset("ttd-no-such-bucket")


@pytest.mark.parametrize("body", [b"", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary", b'"unterminated\n1,2'])
def test_get_latest_dataset_that_is_not_csv_raises_naming_the_key(s3: Any, bucket: str, body: bytes) -> None:
    key = "datasets/time_to_dispatch_2021-07-01T23:00:00.csv"
    s3.put_object(Bucket=bucket, Key=key, Body=body)

    with pytest.raises(DatasetReadError, match=f"s3://{bucket}/{key}: not readable as CSV"):
        get_latest_dataset(bucket)


def test_put_dataset_round_trips_through_get_latest_dataset(s3: Any, bucket: str) -> None:
    frame = generate_orders(40, seed=9)
    key = put_dataset(bucket, frame, datetime(2026, 11, 20, 23, 0, tzinfo=timezone.utc))

    dataset = get_latest_dataset(bucket)

    assert dataset.key == key
    pd.testing.assert_frame_equal(dataset.data, frame)


@pytest.fixture(scope="module")
def s3_with_auth_endpoint() -> Iterator[str]:
    """A second S3 server that checks credentials, as AWS does."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", LOCAL.loopback_host, "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((LOCAL.loopback_host, port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the S3 server with authentication did not start")
                time.sleep(0.1)
        yield f"http://{LOCAL.loopback_host}:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_get_latest_dataset_with_rejected_credentials_says_access_denied(
    s3_with_auth_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENVIRONMENT.aws_endpoint_url, s3_with_auth_endpoint)
    monkeypatch.setenv(ENVIRONMENT.aws_access_key_id, "AKIANOTAKNOWNKEY0000")
    monkeypatch.setenv(ENVIRONMENT.aws_secret_access_key, "not-a-secret")
    monkeypatch.setenv(ENVIRONMENT.aws_default_region, LOCAL.region)

    with pytest.raises(AccessDeniedError, match="s3://ttd-locked/datasets/: access denied"):
        get_latest_dataset("ttd-locked")


def test_a_dataset_over_the_size_limit_is_refused_before_it_is_read(s3: Any, bucket: str) -> None:
    body = generate_orders(100, seed=1).to_csv(index=False).encode()
    s3.put_object(Bucket=bucket, Key="datasets/time_to_dispatch_2026-01-01T00:00:00.csv", Body=body)

    with pytest.raises(DatasetReadError, match=f"the dataset is {len(body):,} bytes, over the limit of "
                       "1,000 bytes .* refusing to read it"):
        get_latest_dataset(bucket, max_bytes=1000)


def test_the_dataset_size_limit_is_far_above_a_hundred_usual_weeks() -> None:
    usual_week = len(generate_orders(1000, seed=1).to_csv(index=False).encode())

    assert S3.max_dataset_bytes >= 10 * 100 * usual_week


@pytest.mark.parametrize(
    "rows, line",
    [
        # As the first data row, the extra fields once became a 200,000-level index (42 s to read).
        (b"1.0,10,SKU001" + b"," * 200_000 + b"\n2.0,20,SKU002\n", 2),
        (b"1.0,10,SKU001\n2.0,20,SKU002" + b"," * 200_000 + b"\n", 3),
    ],
    ids=["first-data-row", "a-later-row"],
)
def test_a_row_with_thousands_of_extra_fields_is_named_at_once(s3: Any, bucket: str, rows: bytes, line: int) -> None:
    body = b"hours_to_dispatch,orders_placed,product_code\n" + rows
    s3.put_object(Bucket=bucket, Key="datasets/time_to_dispatch_2026-01-01T00:00:00.csv", Body=body)
    started = time.monotonic()

    with pytest.raises(DatasetReadError, match=f"line {line} has 200003 fields, more than the header's 3$"):
        get_latest_dataset(bucket)
    assert time.monotonic() - started < 10  # not minutes: nothing builds a 200,000-level index


def test_a_trailing_comma_on_every_row_is_reported_as_such(s3: Any, bucket: str) -> None:
    body = b"hours_to_dispatch,orders_placed,product_code\n1.0,10,SKU001,\n2.0,20,SKU002,\n"
    s3.put_object(Bucket=bucket, Key="datasets/time_to_dispatch_2026-01-01T00:00:00.csv", Body=body)

    with pytest.raises(DatasetReadError, match="line 2 has 4 fields, more than the header's 3; "
                       "a trailing comma"):
        get_latest_dataset(bucket)
