"""The live model against a real S3 API: the newest model that is not rejected, before a time
or now; and naming a model by its artefact id or key.
"""
import pickle
from datetime import datetime, timezone
from typing import Any

import pytest

from pipeline.artefact.model import Model
from pipeline.model_registry.live_model import (
    AmbiguousModelError,
    UnknownModelError,
    get_live_model,
    live_model_object,
    resolve_model_key,
)
from pipeline.model_registry.records import REJECT, RESTORE, list_status_changes, put_status_change, rejected_model_keys
from pipeline.storage.layout import NoObjectsError
from pipeline.storage.signed_artefacts import put_model
from tests.helpers import models_created, persist_model_copy, status_change


def test_live_model_is_the_newest_when_none_is_rejected(s3: Any, bucket: str, trained_model: Model) -> None:
    models_created(bucket, trained_model, [1, 8, 15])

    assert get_live_model(bucket).artefact_id == "00000015"


def test_a_rejected_model_is_skipped_for_the_next_newest(s3: Any, bucket: str, trained_model: Model) -> None:
    _, second, newest = models_created(bucket, trained_model, [1, 8, 15])
    put_status_change(bucket, status_change(newest, REJECT))

    assert get_live_model(bucket).artefact_id == second.artefact_id
    assert rejected_model_keys(bucket) == {newest.artefact_key}


def test_a_restored_model_is_live_again(s3: Any, bucket: str, trained_model: Model) -> None:
    _, _, newest = models_created(bucket, trained_model, [1, 8, 15])
    put_status_change(bucket, status_change(newest, REJECT, 0))
    put_status_change(bucket, status_change(newest, RESTORE, 5))

    assert get_live_model(bucket).artefact_id == newest.artefact_id
    history = list_status_changes(bucket)[str(newest.artefact_key)]
    assert [c.action for c in history] == ["reject", "restore"]


def test_live_model_before_a_time_is_the_newest_non_rejected_created_before_it(
    s3: Any, bucket: str, trained_model: Model
) -> None:
    first, second, _ = models_created(bucket, trained_model, [1, 8, 15])
    put_status_change(bucket, status_change(second, REJECT))

    live = live_model_object(bucket, before=datetime(2026, 10, 14, tzinfo=timezone.utc))

    assert live.key == first.artefact_key


def test_every_model_rejected_is_no_live_model_and_says_so(s3: Any, bucket: str, trained_model: Model) -> None:
    (only,) = models_created(bucket, trained_model, [1])
    put_status_change(bucket, status_change(only, REJECT))

    with pytest.raises(NoObjectsError, match=r"no model that is not rejected \(1 artefact\(s\), 1 rejected\)"):
        get_live_model(bucket)


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


def test_a_future_dated_model_does_not_become_the_live_model(
    s3: Any, bucket: str, trained_model: Model
) -> None:
    live_key = put_model(bucket, trained_model)
    future = pickle.loads(pickle.dumps(trained_model))
    future.created_at = datetime(2099, 1, 1, tzinfo=timezone.utc)
    put_model(bucket, future)

    assert live_model_object(bucket).key == live_key


def october(day: int) -> datetime:
    return datetime(2026, 10, day, 12, tzinfo=timezone.utc)


def test_a_model_is_resolved_by_its_artefact_id(s3: Any, bucket: str, trained_model: Model) -> None:
    persist_model_copy(bucket, trained_model, october(1), "aaaa0001")
    wanted = persist_model_copy(bucket, trained_model, october(8), "bbbb0002")

    assert resolve_model_key(bucket, "bbbb0002") == wanted.artefact_key


def test_a_model_is_resolved_by_its_key(s3: Any, bucket: str, trained_model: Model) -> None:
    wanted = persist_model_copy(bucket, trained_model, october(1), "aaaa0001")

    assert resolve_model_key(bucket, str(wanted.artefact_key)) == wanted.artefact_key


def test_an_unknown_model_is_an_error_naming_it(s3: Any, bucket: str, trained_model: Model) -> None:
    persist_model_copy(bucket, trained_model, october(1), "aaaa0001")

    with pytest.raises(UnknownModelError, match="MODEL 'cafe0000' is not an artefact id or key"):
        resolve_model_key(bucket, "cafe0000")


def test_an_artefact_id_shared_by_two_models_is_ambiguous(s3: Any, bucket: str, trained_model: Model) -> None:
    persist_model_copy(bucket, trained_model, october(1), "dup00001")
    persist_model_copy(bucket, trained_model, october(8), "dup00001")

    with pytest.raises(AmbiguousModelError, match="MODEL .dup00001. is ambiguous .*: it matches 2"):
        resolve_model_key(bucket, "dup00001")
