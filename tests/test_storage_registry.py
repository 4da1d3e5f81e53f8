"""The registry's record of rejected models, and the live model, against a real S3 API."""
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from pipeline.artefact.model import Model
from pipeline.model_registry.live_model import get_live_model, live_model_object
from pipeline.model_registry.records import (
    REJECT,
    RESTORE,
    StatusChange,
    list_status_changes,
    put_status_change,
    rejected_model_keys,
)
from pipeline.storage.client import StorageError
from pipeline.storage.layout import NoObjectsError
from tests.helpers import models_created

WHEN = datetime(2026, 11, 1, 9, 30, tzinfo=timezone.utc)


def change(model: Model, action: str, minutes: int = 0) -> StatusChange:
    assert model.artefact_key is not None
    return StatusChange(model.artefact_key, action, "a reason", "tester", WHEN + timedelta(minutes=minutes))


def test_live_model_is_the_newest_when_none_is_rejected(s3: Any, bucket: str, trained_model: Model) -> None:
    models_created(bucket, trained_model, [1, 8, 15])

    assert get_live_model(bucket).artefact_id == "00000015"


def test_a_rejected_model_is_skipped_for_the_next_newest(s3: Any, bucket: str, trained_model: Model) -> None:
    _, second, newest = models_created(bucket, trained_model, [1, 8, 15])
    put_status_change(bucket, change(newest, REJECT))

    assert get_live_model(bucket).artefact_id == second.artefact_id
    assert rejected_model_keys(bucket) == {newest.artefact_key}


def test_a_restored_model_is_live_again(s3: Any, bucket: str, trained_model: Model) -> None:
    _, _, newest = models_created(bucket, trained_model, [1, 8, 15])
    put_status_change(bucket, change(newest, REJECT, 0))
    put_status_change(bucket, change(newest, RESTORE, 5))

    assert get_live_model(bucket).artefact_id == newest.artefact_id
    history = list_status_changes(bucket)[str(newest.artefact_key)]
    assert [c.action for c in history] == ["reject", "restore"]


def test_live_model_before_a_time_is_the_newest_non_rejected_created_before_it(
    s3: Any, bucket: str, trained_model: Model
) -> None:
    first, second, _ = models_created(bucket, trained_model, [1, 8, 15])
    put_status_change(bucket, change(second, REJECT))

    live = live_model_object(bucket, before=datetime(2026, 10, 14, tzinfo=timezone.utc))

    assert live.key == first.artefact_key


def test_every_model_rejected_is_no_live_model_and_says_so(s3: Any, bucket: str, trained_model: Model) -> None:
    (only,) = models_created(bucket, trained_model, [1])
    put_status_change(bucket, change(only, REJECT))

    with pytest.raises(NoObjectsError, match=r"no model that is not rejected \(1 artefact\(s\), 1 rejected\)"):
        get_live_model(bucket)


def test_status_changes_never_touch_the_models_folder_nor_overwrite(s3: Any, bucket: str, trained_model: Model) -> None:
    (only,) = models_created(bucket, trained_model, [1])
    key = put_status_change(bucket, change(only, REJECT))

    assert key.startswith("registry/time_to_dispatch_2026-10-01T12:00:00.000000Z_00000001/")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="models/")["Contents"]] == [only.artefact_key]
    with pytest.raises(StorageError, match="a status change already exists at this key"):
        put_status_change(bucket, change(only, REJECT))


def test_a_malformed_status_record_is_named(s3: Any, bucket: str) -> None:
    key = "registry/x/2026-11-01T00:00:00Z_reject.json"
    s3.put_object(Bucket=bucket, Key=key, Body=b'{"action": "delete"}')

    with pytest.raises(StorageError, match=f"s3://{bucket}/{key}: not a status change record"):
        list_status_changes(bucket)
