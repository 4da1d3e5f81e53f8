"""The bucket's layout against a real S3 API: timestamps in keys, the keys' formats, and
"newest" over every page of a listing, skipping keys dated in the future or on no real date.
"""
from datetime import datetime, timedelta, timezone
from typing import Any

import pandas as pd
import pytest

from pipeline.local.synthetic import generate_orders
from pipeline.settings import LAYOUT
from pipeline.storage.datasets import get_latest_dataset, put_dataset
from pipeline.storage.layout import (
    NoObjectsError,
    dataset_key,
    dead_letter_key,
    parse_key_timestamp,
    predictions_key,
)
from tests.helpers import put_csv


@pytest.mark.parametrize(
    "key, expected",
    [
        ("datasets/time_to_dispatch_2021-07-01T16:45:38.csv", datetime(2021, 7, 1, 16, 45, 38)),
        ("datasets/time_to_dispatch_2021-07-01T16|45|38.csv", datetime(2021, 7, 1, 16, 45, 38)),
        ("datasets/time_to_dispatch_2021-07-01T16-45-38.csv", datetime(2021, 7, 1, 16, 45, 38)),
        ("datasets/time_to_dispatch_2021-07-01T164538.csv", datetime(2021, 7, 1, 16, 45, 38)),
        ("datasets/time_to_dispatch_2021-07-01 16_45_38.csv", datetime(2021, 7, 1, 16, 45, 38)),
        ("datasets/time_to_dispatch_2021-07-01T16:45:38.25.csv", datetime(2021, 7, 1, 16, 45, 38, 250000)),
        ("datasets/time_to_dispatch_2021-07-01T16:45:38Z.csv", datetime(2021, 7, 1, 16, 45, 38)),
        ("datasets/time_to_dispatch_2021-07-01T18:45:38+02:00.csv", datetime(2021, 7, 1, 16, 45, 38)),
        ("models/time_to_dispatch_2026-11-25T02:07:05.123456Z_ab12cd34.pkl",
         datetime(2026, 11, 25, 2, 7, 5, 123456)),
    ],
)
def test_parse_key_timestamp_accepts_any_single_character_time_separator(key: str, expected: datetime) -> None:
    assert parse_key_timestamp(key) == expected.replace(tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "key",
    [
        "datasets/time_to_dispatch.csv",
        "datasets/time_to_dispatch_latest.csv",
        "datasets/time_to_dispatch_2021-13-01T16:45:38.csv",
        "datasets/time_to_dispatch_2021-02-30T16:45:38.csv",
        "datasets/time_to_dispatch_2021-07-01T25:45:38.csv",
        "datasets/time_to_dispatch_2021-07-01T16:45|38.csv",
        "2021-07-01T16:45:38/readme.csv",
    ],
)
def test_parse_key_timestamp_returns_none_without_a_valid_timestamp_in_the_file_name(key: str) -> None:
    assert parse_key_timestamp(key) is None


def test_dataset_key_follows_data_engineerings_naming() -> None:
    key = dataset_key(datetime(2026, 11, 20, 23, 0, tzinfo=timezone.utc))
    assert key == "datasets/time_to_dispatch_2026-11-20T23:00:00.csv"


def test_a_predictions_key_is_the_dataset_file_stem_under_predictions() -> None:
    key = predictions_key("datasets/time_to_dispatch_2021-07-01T16|45|38.csv")

    assert key == "predictions/time_to_dispatch_2021-07-01T16|45|38.csv"


def test_a_dead_letter_key_is_the_source_the_shard_and_the_first_sequence_number() -> None:
    sequence_number = "49590338271490256608559692538361571095921575989136588898"

    key = dead_letter_key("consumer", "shardId-000000000001", sequence_number)

    assert key == f"stream-dead-letters/consumer/shardId-000000000001/{sequence_number}.jsonl"


def test_get_latest_dataset_takes_the_newest_timestamp_not_the_last_upload(s3: Any, bucket: str) -> None:
    newest = generate_orders(50, seed=1)
    put_csv(s3, bucket, "datasets/time_to_dispatch_2021-07-08T23:00:00.csv", newest)
    put_csv(s3, bucket, "datasets/time_to_dispatch_2021-07-01T23:00:00.csv", generate_orders(50, seed=2))

    dataset = get_latest_dataset(bucket)

    assert dataset.key == "datasets/time_to_dispatch_2021-07-08T23:00:00.csv"
    pd.testing.assert_frame_equal(dataset.data, newest)


def test_get_latest_dataset_orders_by_time_not_by_key_text(s3: Any, bucket: str) -> None:
    # '|' sorts after ':' as text, but this key is one second older.
    put_csv(s3, bucket, "datasets/time_to_dispatch_2021-07-01T16|45|38.csv", generate_orders(20, seed=1))
    put_csv(s3, bucket, "datasets/time_to_dispatch_2021-07-01T16:45:39.csv", generate_orders(20, seed=2))

    assert get_latest_dataset(bucket).key == "datasets/time_to_dispatch_2021-07-01T16:45:39.csv"


def test_get_latest_dataset_skips_keys_without_timestamp_and_non_csv(s3: Any, bucket: str) -> None:
    put_csv(s3, bucket, "datasets/time_to_dispatch_2021-07-01T23:00:00.csv", generate_orders(20, seed=1))
    put_csv(s3, bucket, "datasets/time_to_dispatch_latest.csv", generate_orders(20, seed=2))
    s3.put_object(Bucket=bucket, Key="datasets/time_to_dispatch_2030-01-01T00:00:00.json", Body=b"{}")

    assert get_latest_dataset(bucket).key == "datasets/time_to_dispatch_2021-07-01T23:00:00.csv"


def test_get_latest_dataset_over_1000_keys_orders_by_time_not_by_listing_order(s3: Any, bucket: str) -> None:
    # 1,100 older datasets written as `16|mm|ss`: '|' sorts after ':', so as text they all come
    # after the newest key (`16:59:59`) and fill two pages of the listing behind it.
    body = generate_orders(5, seed=3).to_csv(index=False).encode()
    for i in range(1100):
        s3.put_object(Bucket=bucket, Key=f"datasets/time_to_dispatch_2021-07-01T16|{i // 60:02d}|{i % 60:02d}.csv",
                      Body=body)
    newest = "datasets/time_to_dispatch_2021-07-01T16:59:59.csv"
    s3.put_object(Bucket=bucket, Key=newest, Body=body)
    first_page = s3.list_objects_v2(Bucket=bucket, Prefix=LAYOUT.datasets_prefix)
    assert first_page["IsTruncated"] is True
    assert first_page["Contents"][0]["Key"] == newest

    assert get_latest_dataset(bucket).key == newest


def test_get_latest_dataset_finds_the_newest_on_the_second_page_of_the_listing(s3: Any, bucket: str) -> None:
    body = generate_orders(5, seed=3).to_csv(index=False).encode()
    for i in range(1001):
        s3.put_object(Bucket=bucket, Key=f"datasets/time_to_dispatch_2021-01-01T00:{i // 60:02d}:{i % 60:02d}.csv",
                      Body=body)
    newest = "datasets/time_to_dispatch_2021-06-01T00:00:00.csv"
    s3.put_object(Bucket=bucket, Key=newest, Body=body)
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=LAYOUT.datasets_prefix)
    assert all(item["Key"] != newest for item in listing["Contents"])

    assert get_latest_dataset(bucket).key == newest


def test_get_latest_dataset_without_datasets_names_the_prefix(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="datasets/readme.txt", Body=b"no data yet")

    with pytest.raises(NoObjectsError, match=f"s3://{bucket}/datasets/"):
        get_latest_dataset(bucket)


def test_a_future_dated_dataset_is_ignored_with_a_warning(
    s3: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    put_csv(s3, bucket, "datasets/time_to_dispatch_2026-01-01T00:00:00.csv", generate_orders(5, seed=1))
    put_csv(s3, bucket, "datasets/time_to_dispatch_2099-01-01T00:00:00.csv", generate_orders(5, seed=2))

    dataset = get_latest_dataset(bucket)

    assert dataset.key == "datasets/time_to_dispatch_2026-01-01T00:00:00.csv"
    [warning] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert warning.getMessage().startswith(
        f"skipping s3://{bucket}/datasets/time_to_dispatch_2099-01-01T00:00:00.csv: dated 2099-01-01T00:00:00+00:00"
    )


def test_a_key_dated_within_the_clock_skew_allowance_counts(s3: Any, bucket: str) -> None:
    soon = datetime.now(timezone.utc) + timedelta(hours=LAYOUT.clock_skew_allowance_hours / 2)
    key = put_dataset(bucket, generate_orders(5, seed=1), soon, s3)

    assert get_latest_dataset(bucket).key == key


def test_a_dataset_key_with_an_impossible_date_is_skipped_with_a_warning(
    s3: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    put_csv(s3, bucket, "datasets/time_to_dispatch_2026-01-01T00:00:00.csv", generate_orders(5, seed=1))
    put_csv(s3, bucket, "datasets/time_to_dispatch_2026-02-30T00:00:00.csv", generate_orders(5, seed=2))

    assert get_latest_dataset(bucket).key == "datasets/time_to_dispatch_2026-01-01T00:00:00.csv"
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"skipping s3://{bucket}/datasets/time_to_dispatch_2026-02-30T00:00:00.csv: "
        "its timestamp is not a real date and time"
    ]
