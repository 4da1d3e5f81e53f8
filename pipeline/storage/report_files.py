"""The model report's files on S3: each training run's report.json, plots and report.html
under `reports/`, never overwritten, and reading them back.

The SHA-256 of a model's report.html is recorded in the model artefact (`report_sha256`), which
is signed: the service serves the report only if the object still has that digest, so a page
put in its place by anyone who can write `reports/` is not served.
"""
import hashlib
import logging
from typing import Any, Dict, List, Optional

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.artefact.model import Model
from pipeline.settings import LAYOUT
from pipeline.storage.client import StorageError, error_code, get_object_bytes, put_new_object, s3_client, storage_error
from pipeline.utils import quote
from pipeline.storage.layout import artefact_file_stem

# What a report's files are served as, by extension; nothing else is written under reports/.
REPORT_CONTENT_TYPES = {".json": "application/json", ".png": "image/png", ".html": "text/html; charset=utf-8"}

log = logging.getLogger(__name__)


class ReportError(StorageError):
    """A model's report is not the one its signed artefact records."""


def report_digest(body: bytes) -> str:
    """The SHA-256 of a report file, in hex: what a model artefact records of its report.html."""
    return hashlib.sha256(body).hexdigest()


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
    if not prefix.startswith(LAYOUT.reports_prefix) or not prefix.endswith("/"):
        raise ValueError(f"a report folder must be under {LAYOUT.reports_prefix} and end in '/', got {prefix!r}")
    client = client or s3_client()
    keys = []
    for name, body in files.items():
        content_type = REPORT_CONTENT_TYPES.get("." + name.rsplit(".", 1)[-1].lower())
        if "/" in name or content_type is None:
            raise ValueError(f"{name!r} is not a report file name (.json, .png or .html, no folder)")
        key = prefix + name
        put_new_object(client, bucket, key, body, "a report file", ContentType=content_type)
        keys.append(key)
    return keys


def get_report_html(bucket: str, model: Model, client: Any = None) -> Optional[bytes]:
    """The HTML report its lineage names, or None for a model that has none (made before
    reports existed) or whose report object is missing.

    Raises:
        ReportError: the model records no SHA-256 of its report, or the report's is another
            (it was replaced or altered since the model was signed).
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed otherwise.
    """
    if not model.report_key:
        return None
    client = client or s3_client()
    uri = f"s3://{bucket}/{model.report_key}"
    try:
        body = bytes(client.get_object(Bucket=bucket, Key=model.report_key)["Body"].read())
    except ClientError as error:
        if error_code(error) in ("NoSuchKey", "404"):
            log.warning(f"model {model.artefact_id} names the report s3://{bucket}/{model.report_key}, "
                        "which does not exist")
            return None
        raise storage_error(error, bucket, model.report_key, "read") from error
    except BotoCoreError as error:
        raise storage_error(error, bucket, model.report_key, "read") from error
    actual = report_digest(body)
    if actual != model.report_sha256:
        recorded = f"records {quote(model.report_sha256)}" if model.report_sha256 else "records none"
        raise ReportError(
            f"the report {uri} is not the one model {model.artefact_id} was signed with (its SHA-256 is {actual}; "
            f"the model's signed artefact {recorded}): it was replaced or altered, so it is not served")
    return body


def get_report_file(bucket: str, model: Model, name: str, client: Any = None) -> bytes:
    """One file of a model's report folder (e.g. report.json), by name.

    Raises:
        StorageError: the model has no report, or S3 refused or failed (no such file).
    """
    if not model.report_key:
        raise StorageError(f"model {model.artefact_id} has no report (made before reports existed)")
    client = client or s3_client()
    body, _ = get_object_bytes(client, bucket, model.report_key.rsplit("/", 1)[0] + "/" + name)
    return body


def list_report_keys(bucket: str, artefact_key: str, client: Any = None) -> List[str]:
    """The keys in the report folder of a model artefact (empty if it has no report).

    Raises:
        NoSuchBucketError, AccessDeniedError, StorageError: if the listing fails.
    """
    client = client or s3_client()
    prefix = f"{LAYOUT.reports_prefix}{artefact_file_stem(artefact_key)}/"
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))
    except (ClientError, BotoCoreError) as error:
        raise storage_error(error, bucket, prefix, "list") from error
