"""The storage module against a real S3 API: moto's server over HTTP on 127.0.0.1."""
import hashlib
import io
import os
import pickle
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any, Dict, Iterator

import pandas as pd
import pytest

from pipeline.artefact.model import Model
from pipeline.local.local_s3 import create_bucket
from pipeline.local.synthetic import generate_orders
from pipeline.model_registry.live_model import get_live_model, live_model_object
from pipeline.storage.client import (
    S3_CONNECT_TIMEOUT_SECONDS,
    S3_MAX_ATTEMPTS,
    S3_READ_TIMEOUT_SECONDS,
    AccessDeniedError,
    NoSuchBucketError,
    s3_client,
)
from pipeline.storage.datasets import MAX_DATASET_BYTES, DatasetReadError, get_latest_dataset, put_dataset
from pipeline.storage.layout import CLOCK_SKEW_ALLOWANCE, NoObjectsError, dataset_key, model_key, parse_key_timestamp
from pipeline.storage.signed_artefacts import ArtefactError, put_model
from tests.helpers import REGION, free_port, signed_metadata


def _put_csv(client: Any, bucket: str, key: str, frame: pd.DataFrame) -> Dict[str, Any]:
    body = frame.to_csv(index=False).encode()
    response: Dict[str, Any] = client.put_object(Bucket=bucket, Key=key, Body=body)
    return {"body": body, **response}


# --- timestamps in keys -----------------------------------------------------------------

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


# --- datasets -------------------------------------------------------------------------------

def test_get_latest_dataset_takes_the_newest_timestamp_not_the_last_upload(s3: Any, bucket: str) -> None:
    newest = generate_orders(50, seed=1)
    _put_csv(s3, bucket, "datasets/time_to_dispatch_2021-07-08T23:00:00.csv", newest)
    _put_csv(s3, bucket, "datasets/time_to_dispatch_2021-07-01T23:00:00.csv", generate_orders(50, seed=2))

    dataset = get_latest_dataset(bucket)

    assert dataset.key == "datasets/time_to_dispatch_2021-07-08T23:00:00.csv"
    pd.testing.assert_frame_equal(dataset.data, newest)


def test_get_latest_dataset_orders_by_time_not_by_key_text(s3: Any, bucket: str) -> None:
    # '|' sorts after ':' as text, but this key is one second older.
    _put_csv(s3, bucket, "datasets/time_to_dispatch_2021-07-01T16|45|38.csv", generate_orders(20, seed=1))
    _put_csv(s3, bucket, "datasets/time_to_dispatch_2021-07-01T16:45:39.csv", generate_orders(20, seed=2))

    assert get_latest_dataset(bucket).key == "datasets/time_to_dispatch_2021-07-01T16:45:39.csv"


def test_get_latest_dataset_skips_keys_without_timestamp_and_non_csv(s3: Any, bucket: str) -> None:
    _put_csv(s3, bucket, "datasets/time_to_dispatch_2021-07-01T23:00:00.csv", generate_orders(20, seed=1))
    _put_csv(s3, bucket, "datasets/time_to_dispatch_latest.csv", generate_orders(20, seed=2))
    s3.put_object(Bucket=bucket, Key="datasets/time_to_dispatch_2030-01-01T00:00:00.json", Body=b"{}")

    assert get_latest_dataset(bucket).key == "datasets/time_to_dispatch_2021-07-01T23:00:00.csv"


def test_get_latest_dataset_records_etag_and_version_id(s3: Any, bucket: str) -> None:
    put = _put_csv(s3, bucket, "datasets/time_to_dispatch_2021-07-01T23:00:00.csv", generate_orders(20, seed=1))

    dataset = get_latest_dataset(bucket)

    assert dataset.etag == hashlib.md5(put["body"]).hexdigest()
    assert dataset.version_id == put["VersionId"]
    assert dataset.timestamp == datetime(2021, 7, 1, 23, 0, tzinfo=timezone.utc)
    assert dataset.uri == f"s3://{bucket}/datasets/time_to_dispatch_2021-07-01T23:00:00.csv"


def test_get_latest_dataset_reads_the_current_version_of_an_overwritten_key(s3: Any, bucket: str) -> None:
    key = "datasets/time_to_dispatch_2021-07-01T23:00:00.csv"
    _put_csv(s3, bucket, key, generate_orders(20, seed=1))
    second = _put_csv(s3, bucket, key, generate_orders(30, seed=2))

    dataset = get_latest_dataset(bucket)

    assert dataset.version_id == second["VersionId"]
    assert len(dataset.data) == 30


def test_get_latest_dataset_in_an_unversioned_bucket_has_no_version_id(s3: Any) -> None:
    bucket = create_bucket(s3, versioned=False)
    _put_csv(s3, bucket, "datasets/time_to_dispatch_2021-07-01T23:00:00.csv", generate_orders(20, seed=1))

    assert get_latest_dataset(bucket).version_id is None


def test_get_latest_dataset_over_1000_keys_orders_by_time_not_by_listing_order(s3: Any, bucket: str) -> None:
    # 1,100 older datasets written as `16|mm|ss`: '|' sorts after ':', so as text they all come
    # after the newest key (`16:59:59`) and fill two pages of the listing behind it.
    body = generate_orders(5, seed=3).to_csv(index=False).encode()
    for i in range(1100):
        s3.put_object(Bucket=bucket, Key=f"datasets/time_to_dispatch_2021-07-01T16|{i // 60:02d}|{i % 60:02d}.csv",
                      Body=body)
    newest = "datasets/time_to_dispatch_2021-07-01T16:59:59.csv"
    s3.put_object(Bucket=bucket, Key=newest, Body=body)
    first_page = s3.list_objects_v2(Bucket=bucket, Prefix="datasets/")
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
    assert all(item["Key"] != newest for item in s3.list_objects_v2(Bucket=bucket, Prefix="datasets/")["Contents"])

    assert get_latest_dataset(bucket).key == newest


def test_get_latest_dataset_without_datasets_names_the_prefix(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="datasets/readme.txt", Body=b"no data yet")

    with pytest.raises(NoObjectsError, match=f"s3://{bucket}/datasets/"):
        get_latest_dataset(bucket)


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


# --- access control -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3_with_auth_endpoint() -> Iterator[str]:
    """A second S3 server that checks credentials, as AWS does."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the S3 server with authentication did not start")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_get_latest_dataset_with_rejected_credentials_says_access_denied(
    s3_with_auth_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_with_auth_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAKNOWNKEY0000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)

    with pytest.raises(AccessDeniedError, match="s3://ttd-locked/datasets/: access denied"):
        get_latest_dataset("ttd-locked")


# --- models ---------------------------------------------------------------------------------

def test_put_model_then_get_live_model_returns_an_equal_verified_model(
    s3: Any, bucket: str, trained_model: Model
) -> None:
    key = put_model(bucket, trained_model)

    loaded = get_live_model(bucket)

    assert key.startswith("models/time_to_dispatch_") and key.endswith(f"_{trained_model.artefact_id}.pkl")
    assert loaded.artefact_key == key
    assert str(loaded) == str(trained_model)
    assert loaded.model_hash == trained_model.model_hash
    assert list(loaded.predict(["SKU003"], [112])) == list(trained_model.predict(["SKU003"], [112]))


def test_put_model_stores_the_sha256_of_the_artefact_in_its_metadata(
    s3: Any, bucket: str, trained_model: Model
) -> None:
    key = put_model(bucket, trained_model)

    stored = s3.get_object(Bucket=bucket, Key=key)

    assert stored["Metadata"]["sha256"] == hashlib.sha256(stored["Body"].read()).hexdigest()


def test_put_model_never_overwrites_an_existing_artefact(s3: Any, bucket: str, trained_model: Model) -> None:
    key = put_model(bucket, trained_model)
    before = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    trained_model.git_commit = "a-different-commit"

    with pytest.raises(ArtefactError, match="already exists"):
        put_model(bucket, trained_model)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == before


def test_two_models_created_in_the_same_second_get_different_keys(
    s3: Any, bucket: str, trained_model: Model
) -> None:
    twin = pickle.loads(pickle.dumps(trained_model))
    twin.artefact_id = "0123abcd"

    keys = {put_model(bucket, trained_model), put_model(bucket, twin)}

    assert len(keys) == 2
    assert len(s3.list_objects_v2(Bucket=bucket, Prefix="models/")["Contents"]) == 2


def test_get_live_model_takes_the_newest_timestamp(s3: Any, bucket: str, trained_model: Model) -> None:
    older = pickle.loads(pickle.dumps(trained_model))
    older.created_at = datetime(2020, 1, 1, tzinfo=timezone.utc)
    older.artefact_id = "00000000"
    put_model(bucket, trained_model)
    put_model(bucket, older)

    assert get_live_model(bucket).artefact_id == trained_model.artefact_id


def test_get_live_model_without_models_names_the_prefix(s3: Any, bucket: str) -> None:
    with pytest.raises(NoObjectsError, match=f"s3://{bucket}/models/: no .pkl object"):
        get_live_model(bucket)


def test_get_live_model_refuses_an_artefact_whose_bytes_changed(
    s3: Any, bucket: str, trained_model: Model
) -> None:
    key = put_model(bucket, trained_model)
    stored = s3.get_object(Bucket=bucket, Key=key)
    body = bytearray(stored["Body"].read())
    body[len(body) // 2] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body), Metadata=stored["Metadata"])

    with pytest.raises(ArtefactError, match="SHA-256 of the artefact is .* refusing to load it"):
        get_live_model(bucket)


def test_get_live_model_refuses_an_artefact_without_a_checksum(
    s3: Any, bucket: str, trained_model: Model
) -> None:
    s3.put_object(Bucket=bucket, Key=model_key(trained_model), Body=pickle.dumps(trained_model))

    with pytest.raises(ArtefactError, match="no SHA-256 checksum"):
        get_live_model(bucket)


class _RunsACommand:
    def __reduce__(self) -> Any:
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    "payload, message",
    [
        (_RunsACommand(), r"names (posix|os|nt)\.system, which a model artefact may not contain"),
        (io.StringIO("x"), r"names _io\.StringIO"),
        ({"estimator": "not a model"}, "the artefact is a dict, not a Model"),
    ],
)
def test_get_live_model_refuses_a_correctly_checksummed_pickle_that_is_not_a_model(
    s3: Any, bucket: str, payload: Any, message: str
) -> None:
    body = pickle.dumps(payload)
    key = "models/time_to_dispatch_2026-01-01T00:00:00.000000Z_deadbeef.pkl"
    s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata=signed_metadata(body))

    with pytest.raises(ArtefactError, match=message):
        get_live_model(bucket)


def test_put_model_to_a_missing_bucket_names_the_bucket(s3: Any, trained_model: Model) -> None:
    with pytest.raises(NoSuchBucketError, match="s3://ttd-no-such-bucket: bucket does not exist"):
        put_model("ttd-no-such-bucket", trained_model)


# --- hostile and malformed objects --------------------------------------------------------------

def test_a_future_dated_dataset_is_ignored_with_a_warning(
    s3: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    _put_csv(s3, bucket, "datasets/time_to_dispatch_2026-01-01T00:00:00.csv", generate_orders(5, seed=1))
    _put_csv(s3, bucket, "datasets/time_to_dispatch_2099-01-01T00:00:00.csv", generate_orders(5, seed=2))

    dataset = get_latest_dataset(bucket)

    assert dataset.key == "datasets/time_to_dispatch_2026-01-01T00:00:00.csv"
    [warning] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert warning.getMessage().startswith(
        f"skipping s3://{bucket}/datasets/time_to_dispatch_2099-01-01T00:00:00.csv: dated 2099-01-01T00:00:00+00:00"
    )


def test_a_key_dated_within_the_clock_skew_allowance_counts(s3: Any, bucket: str) -> None:
    soon = datetime.now(timezone.utc) + CLOCK_SKEW_ALLOWANCE / 2
    key = put_dataset(bucket, generate_orders(5, seed=1), soon, s3)

    assert get_latest_dataset(bucket).key == key


def test_a_future_dated_model_does_not_become_the_live_model(
    s3: Any, bucket: str, trained_model: Model
) -> None:
    live_key = put_model(bucket, trained_model)
    future = pickle.loads(pickle.dumps(trained_model))
    future.created_at = datetime(2099, 1, 1, tzinfo=timezone.utc)
    put_model(bucket, future)

    assert live_model_object(bucket).key == live_key


def test_a_dataset_key_with_an_impossible_date_is_skipped_with_a_warning(
    s3: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    _put_csv(s3, bucket, "datasets/time_to_dispatch_2026-01-01T00:00:00.csv", generate_orders(5, seed=1))
    _put_csv(s3, bucket, "datasets/time_to_dispatch_2026-02-30T00:00:00.csv", generate_orders(5, seed=2))

    assert get_latest_dataset(bucket).key == "datasets/time_to_dispatch_2026-01-01T00:00:00.csv"
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"skipping s3://{bucket}/datasets/time_to_dispatch_2026-02-30T00:00:00.csv: "
        "its timestamp is not a real date and time"
    ]


def test_a_dataset_over_the_size_limit_is_refused_before_it_is_read(s3: Any, bucket: str) -> None:
    body = generate_orders(100, seed=1).to_csv(index=False).encode()
    s3.put_object(Bucket=bucket, Key="datasets/time_to_dispatch_2026-01-01T00:00:00.csv", Body=body)

    with pytest.raises(DatasetReadError, match=f"the dataset is {len(body):,} bytes, over the limit of "
                       "1,000 bytes .* refusing to read it"):
        get_latest_dataset(bucket, max_bytes=1000)


def test_the_dataset_size_limit_is_far_above_a_hundred_usual_weeks() -> None:
    usual_week = len(generate_orders(1000, seed=1).to_csv(index=False).encode())

    assert MAX_DATASET_BYTES >= 10 * 100 * usual_week


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


def test_the_s3_client_has_the_pipelines_timeouts_and_standard_retries(s3_env: Dict[str, str]) -> None:
    config = s3_client().meta.config

    assert (config.connect_timeout, config.read_timeout) == (
        S3_CONNECT_TIMEOUT_SECONDS, S3_READ_TIMEOUT_SECONDS
    )
    assert config.retries == {"mode": "standard", "total_max_attempts": S3_MAX_ATTEMPTS}


def test_an_artefact_signed_with_an_unknown_key_id_is_refused(
    s3: Any, bucket: str, trained_model: Model
) -> None:
    body = pickle.dumps(trained_model)
    s3.put_object(Bucket=bucket, Key=model_key(trained_model), Body=body,
                  Metadata=signed_metadata(body, "elsewhere:" + "e" * 64))

    with pytest.raises(ArtefactError, match="signed with key id 'elsewhere', which is not one of the keys"):
        get_live_model(bucket)


def test_put_model_signs_the_artefact_with_the_current_key(s3: Any, bucket: str, trained_model: Model) -> None:
    key = put_model(bucket, trained_model)
    stored = s3.get_object(Bucket=bucket, Key=key)

    assert stored["Metadata"] == signed_metadata(stored["Body"].read())
