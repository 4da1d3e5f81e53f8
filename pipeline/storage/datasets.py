"""Weekly datasets: the newest one with its version, one exact version, strict CSV parsing, and
the size limit. A dataset larger than S3.max_dataset_bytes is refused before it is read.
"""
import csv
import io
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, List, Optional

import pandas as pd

from pipeline.settings import LAYOUT, S3
from pipeline.storage.client import (
    ObjectTooLargeError,
    StorageError,
    get_object_bytes,
    put_object_bytes,
    response_version_id,
    s3_client,
)
from pipeline.storage.layout import (
    StoredObject,
    dataset_key,
    latest_object,
    list_timestamped_objects,
    parse_key_timestamp,
)
from pipeline.utils import quote


class DatasetReadError(StorageError):
    """A dataset object could not be read as CSV."""


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


def get_latest_dataset(
    bucket: str, prefix: str = LAYOUT.datasets_prefix, client: Any = None, max_bytes: int = S3.max_dataset_bytes
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
    try:
        body, response = get_object_bytes(client, bucket, newest.key, max_bytes)
    except ObjectTooLargeError as error:
        raise DatasetReadError(
            f"{uri}: the dataset is {error.size:,} bytes, over the limit of {error.limit:,} bytes "
            "(MAX_DATASET_BYTES, far above any week of orders); refusing to read it"
        ) from error
    data = read_csv_strictly(body, uri)
    return Dataset(
        data=data,
        bucket=bucket,
        key=newest.key,
        timestamp=newest.timestamp,
        etag=response["ETag"].strip('"'),
        version_id=response_version_id(response),
    )


def get_dataset_version(bucket: str, key: str, version_id: Optional[str], client: Any = None) -> Dataset:
    """Download one exact version of a dataset (the newest when `version_id` is None), e.g. the
    week a model was trained on, as its lineage names it.

    Raises:
        DatasetReadError: the object is not readable CSV.
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed (no such
            key or version).
    """
    body, response = get_object_bytes(client or s3_client(), bucket, key, version_id=version_id)
    data = read_csv_strictly(body, f"s3://{bucket}/{key}")
    stamp = parse_key_timestamp(key) or datetime.fromtimestamp(0, timezone.utc)
    return Dataset(data, bucket, key, stamp, response["ETag"].strip('"'), response_version_id(response))


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
    return put_object_bytes(bucket, dataset_key(timestamp), data.to_csv(index=False).encode("utf-8"), client=client)


def list_datasets(bucket: str, client: Any = None) -> List[StoredObject]:
    """Every dataset under `datasets/` with a timestamp in its key, oldest first.

    Raises:
        NoSuchBucketError, AccessDeniedError, StorageError: if the listing fails.
    """
    datasets = list(list_timestamped_objects(bucket, LAYOUT.datasets_prefix, ".csv", client))
    return sorted(datasets, key=lambda item: (item.timestamp, item.key))
