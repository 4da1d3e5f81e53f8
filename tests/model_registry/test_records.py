"""The registry's records against a real S3 API: status changes filed by artefact, never
overwritten, a malformed one named.
"""
from typing import Any

import pytest

from pipeline.artefact.model import Model
from pipeline.model_registry.records import REJECT, list_status_changes, put_status_change
from pipeline.settings import LAYOUT
from pipeline.storage.client import StorageError
from tests.helpers import models_created, status_change


def test_status_changes_never_touch_the_models_folder_nor_overwrite(s3: Any, bucket: str, trained_model: Model) -> None:
    (only,) = models_created(bucket, trained_model, [1])
    key = put_status_change(bucket, status_change(only, REJECT))

    assert key.startswith("registry/time_to_dispatch_2026-10-01T12:00:00.000000Z_00000001/")
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=LAYOUT.models_prefix)
    assert [o["Key"] for o in listing["Contents"]] == [only.artefact_key]
    with pytest.raises(StorageError, match="change 1 of the model's status already exists at this key"):
        put_status_change(bucket, status_change(only, REJECT), number=1)


def test_a_malformed_status_record_is_named(s3: Any, bucket: str) -> None:
    key = "registry/x/2026-11-01T00:00:00Z_reject.json"
    s3.put_object(Bucket=bucket, Key=key, Body=b'{"action": "delete"}')

    with pytest.raises(StorageError, match=f"s3://{bucket}/{key}: not a status change record"):
        list_status_changes(bucket)
