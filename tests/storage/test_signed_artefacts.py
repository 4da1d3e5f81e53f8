"""Model artefacts against a real S3 API: persisted signed and checksummed, never overwritten,
loaded only once verified and only if made of allowed classes; artefacts pickled before
`pipeline/` had folders, whose classes were `pipeline.model.*`, still load.
"""
import hashlib
import hmac
import io
import os
import pickle
import re
import sys
import types
from datetime import datetime, timezone
from typing import Any, List

import pytest

from pipeline.artefact import features, model as model_module
from pipeline.artefact.model import Model
from pipeline.model_registry.live_model import get_live_model
from pipeline.model_registry.records import REJECT, StatusChange, put_status_change
from pipeline.settings import ARTEFACT, LAYOUT
from pipeline.storage.client import NoSuchBucketError, s3_client
from pipeline.storage.layout import model_key
from pipeline.storage.signed_artefacts import ArtefactError, get_model, put_model
from tests.helpers import (
    SERVED_PARTS,
    TEST_SIGNING_KEY,
    made_before_the_served_parts,
    persist_model_copy,
    signed_metadata,
)

# Where the artefact's classes were before `pipeline/` had folders, as such artefacts name them.
FORMER_PATHS = {
    "pipeline.model": ("Model", "TaskMetrics", "DatasetLineage", "MonotonicityReport", "ProductMonotonicity"),
    "pipeline.features": ("ProductCodeEncoding",),
}


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

    assert stored["Metadata"][LAYOUT.sha256_metadata_key] == hashlib.sha256(stored["Body"].read()).hexdigest()


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
    assert len(s3.list_objects_v2(Bucket=bucket, Prefix=LAYOUT.models_prefix)["Contents"]) == 2


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
    s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata=signed_metadata(body, key))

    with pytest.raises(ArtefactError, match=message):
        get_live_model(bucket)


def test_put_model_to_a_missing_bucket_names_the_bucket(s3: Any, trained_model: Model) -> None:
    with pytest.raises(NoSuchBucketError, match="s3://ttd-no-such-bucket: bucket does not exist"):
        put_model("ttd-no-such-bucket", trained_model)


def test_an_artefact_signed_with_an_unknown_key_id_is_refused(
    s3: Any, bucket: str, trained_model: Model
) -> None:
    body = pickle.dumps(trained_model)
    s3.put_object(Bucket=bucket, Key=model_key(trained_model), Body=body,
                  Metadata=signed_metadata(body, model_key(trained_model), "elsewhere:" + "e" * 64))

    with pytest.raises(ArtefactError, match="signed with key id 'elsewhere', which is not one of the keys"):
        get_live_model(bucket)


def test_put_model_signs_the_artefact_with_the_current_key(s3: Any, bucket: str, trained_model: Model) -> None:
    key = put_model(bucket, trained_model)
    stored = s3.get_object(Bucket=bucket, Key=key)

    assert stored["Metadata"] == signed_metadata(stored["Body"].read(), key)


def pickled_under_the_former_paths(model: Any) -> bytes:
    """`model` pickled as the code before `pipeline/` had folders pickled it: its classes named
    `pipeline.model.Model`, ..., `pipeline.features.ProductCodeEncoding`. The classes and modules
    are as they were again once the bytes are made."""
    homes = {"pipeline.model": model_module, "pipeline.features": features}
    with pytest.MonkeyPatch.context() as patch:
        for former, names in FORMER_PATHS.items():
            module = types.ModuleType(former)
            for name in names:
                cls = getattr(homes[former], name)
                setattr(module, name, cls)
                patch.setattr(cls, "__module__", former)
            patch.setitem(sys.modules, former, module)
        return pickle.dumps(model, protocol=ARTEFACT.pickle_protocol)


def test_an_artefact_pickled_under_the_former_module_paths_loads_verified_as_todays_classes(
    s3: Any, bucket: str, trained_model: Model
) -> None:
    trained_model = made_before_the_served_parts(trained_model)
    body = pickled_under_the_former_paths(trained_model)
    assert b"pipeline.model" in body and b"pipeline.features" in body and b"pipeline.artefact" not in body
    assert "pipeline.model" not in sys.modules and Model.__module__ == "pipeline.artefact.model"
    key = model_key(trained_model)
    s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata=signed_metadata(body, key))

    loaded = get_model(bucket, key)

    assert type(loaded) is Model and type(loaded.encoding) is features.ProductCodeEncoding
    assert type(loaded.dataset) is model_module.DatasetLineage and type(loaded.metrics) is model_module.TaskMetrics
    assert str(loaded) == str(trained_model) and loaded.lineage() == {**trained_model.lineage(), "artefact_key": key}
    assert loaded.predict_one("SKU003", 112) == trained_model.predict_one("SKU003", 112)
    assert get_live_model(bucket).artefact_key == key


def test_the_former_module_paths_admit_only_the_artefacts_own_classes(s3: Any, bucket: str) -> None:
    # GLOBAL pipeline.model.library_versions, called with no arguments: a function that lived
    # there, not one of the classes an artefact is made of.
    body = b"cpipeline.model\nlibrary_versions\n(tR."
    key = "models/time_to_dispatch_2026-01-01T00:00:00.000000Z_deadbeef.pkl"
    s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata=signed_metadata(body, key))

    with pytest.raises(ArtefactError, match=r"names pipeline\.model\.library_versions, which a model artefact may not"):
        get_model(bucket, key)


# --- where an artefact lives is part of what is signed (replays and rollbacks) -------------

def _replay_key() -> str:
    """A key newer than every model, as someone who can write `models/` would pick it."""
    now = datetime.now(timezone.utc)
    return f"{LAYOUT.models_prefix}{LAYOUT.model_file_stem}_{now:%Y-%m-%dT%H:%M:%S.%f}Z_replay01.pkl"


@pytest.mark.parametrize("copied", ["the-rejected-model", "an-older-model"])
def test_a_signed_artefact_copied_to_a_newer_key_is_refused_not_made_live(
    s3: Any, bucket: str, trained_model: Model, copied: str
) -> None:
    older = persist_model_copy(bucket, trained_model, datetime(2026, 10, 1, 12, tzinfo=timezone.utc), "0ld00001")
    newest = persist_model_copy(bucket, trained_model, datetime(2026, 10, 8, 12, tzinfo=timezone.utc), "bad00002")
    put_status_change(bucket, StatusChange(
        str(newest.artefact_key), REJECT, "late orders", "tester", datetime(2026, 10, 9, tzinfo=timezone.utc)))
    source = newest if copied == "the-rejected-model" else older
    replay = _replay_key()
    s3.copy_object(Bucket=bucket, Key=replay, CopySource={"Bucket": bucket, "Key": str(source.artefact_key)},
                   MetadataDirective="COPY")

    with pytest.raises(ArtefactError, match=f"s3://{bucket}/{replay}: .*copied here from another key"):
        get_live_model(bucket)


def test_an_artefact_signed_for_its_key_whose_own_identity_is_another_is_refused(
    s3: Any, bucket: str, trained_model: Model
) -> None:
    # Signed for the key it lives at, by a holder of the key, yet the model inside says it is
    # another artefact: what it is must match where it lives too.
    body = pickle.dumps(trained_model, protocol=ARTEFACT.pickle_protocol)
    key = f"{LAYOUT.models_prefix}{LAYOUT.model_file_stem}_2026-10-01T12:00:00.000000Z_0ther001.pkl"
    s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata=signed_metadata(body, key))

    with pytest.raises(ArtefactError, match=re.escape(f"s3://{bucket}/{key}: the artefact is model "
                                                      f"'{trained_model.artefact_id}' created at ") + ".*"
                       + re.escape(f", whose key is '{model_key(trained_model)}', not the key it was read from")):
        get_model(bucket, key)


def test_an_artefact_signed_over_its_bytes_only_is_refused_naming_the_remedy(
    s3: Any, bucket: str, trained_model: Model
) -> None:
    # How artefacts were signed before the key was part of what is signed: a copy of such an
    # artefact at any other key verifies as well as the original.
    body = pickle.dumps(trained_model, protocol=ARTEFACT.pickle_protocol)
    key = model_key(trained_model)
    metadata = signed_metadata(body, key)
    metadata[LAYOUT.signature_metadata_key] = hmac.new(
        TEST_SIGNING_KEY.partition(":")[2].encode(), body, hashlib.sha256).hexdigest()
    del metadata[LAYOUT.signature_scheme_metadata_key]
    s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata=metadata)

    with pytest.raises(ArtefactError, match="signed over its bytes only.*retrain"):
        get_model(bucket, key)


# --- the size limit ----------------------------------------------------------------------

# Far over any artefact the train stage makes, and over the artefact size limit.
OVERSIZED_BYTES = 40 * 2**20


def test_an_artefact_over_the_size_limit_is_refused_before_its_body_is_read(s3: Any, bucket: str) -> None:
    key = f"{LAYOUT.models_prefix}{LAYOUT.model_file_stem}_2026-10-01T12:00:00.000000Z_b1660001.pkl"
    s3.put_object(Bucket=bucket, Key=key, Body=b"\0" * OVERSIZED_BYTES)
    client = s3_client()
    bodies: List[Any] = []
    client.meta.events.register("after-call.s3.GetObject", lambda parsed, **_: bodies.append(parsed["Body"]))

    with pytest.raises(ArtefactError, match=f"s3://{bucket}/{key}: the object is {OVERSIZED_BYTES:,} bytes, "
                       "over the limit of"):
        get_model(bucket, key, client)

    # botocore counts what was read of each response's body: nothing of this one.
    assert [body._amount_read for body in bodies] == [0]
    assert ARTEFACT.max_artefact_bytes < OVERSIZED_BYTES


def test_put_model_refuses_an_artefact_over_the_size_limit_so_none_is_persisted_that_no_reader_loads(
    s3: Any, bucket: str, trained_model: Model
) -> None:
    trained_model.hyperparameters["padding"] = "x" * (ARTEFACT.max_artefact_bytes + 1)

    with pytest.raises(ArtefactError, match="over the artefact size limit"):
        put_model(bucket, trained_model)

    assert s3.list_objects_v2(Bucket=bucket, Prefix=LAYOUT.models_prefix).get("KeyCount", 0) == 0


def test_an_artefact_made_before_the_served_parts_loads_and_serves_the_tree_without_a_bound(
    s3: Any, bucket: str, trained_model: Model
) -> None:
    old = made_before_the_served_parts(trained_model)
    body = pickle.dumps(old, protocol=ARTEFACT.pickle_protocol)
    assert b"pipeline.artefact.calibration" not in body and not set(SERVED_PARTS) & set(pickle.loads(body).__dict__)
    key = model_key(trained_model)
    s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata=signed_metadata(body, key))

    loaded = get_model(bucket, key)

    assert loaded.calibration is None and loaded.upper_bound is None and loaded.trained_ranges is None
    tree = float(trained_model.predict_tree(["SKU003"], [112.0])[0])
    assert loaded.estimate_one("SKU003", 112) == (tree, None, False)
    beyond = loaded.monotonicity.max_orders_placed + 1
    assert loaded.estimate_one("SKU003", beyond).extrapolated is True
    assert loaded.estimate_one("SKU003", loaded.monotonicity.max_orders_placed).extrapolated is False
    lineage = loaded.lineage()
    assert lineage["calibration"] is None and lineage["upper_bound"] is None and lineage["tree_metrics"] is None
