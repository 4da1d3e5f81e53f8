"""The live model: the newest model artefact that is not rejected, the one definition of
"newest model" that the serve stage, the champion selection and batch scoring use; and naming
one model by its artefact id or key.
"""
from datetime import datetime
from typing import Any, List, Optional, Set

from pipeline.artefact.model import Model
from pipeline.model_registry.records import rejected_model_keys
from pipeline.settings import ARTEFACT, LAYOUT
from pipeline.storage.client import StorageError, s3_client
from pipeline.storage.layout import (
    NoObjectsError,
    StoredObject,
    artefact_id_of_key,
    list_timestamped_objects,
    utc,
)
from pipeline.storage.signed_artefacts import get_model
from pipeline.utils import listed, quote


class UnknownModelError(StorageError):
    """No model artefact matches the artefact id or key given."""


class AmbiguousModelError(StorageError):
    """More than one model artefact matches the artefact id given."""


def list_models(bucket: str, client: Any = None) -> List[StoredObject]:
    """Every model artefact under `models/` with a timestamp in its key, newest first.

    Raises:
        NoSuchBucketError, AccessDeniedError, StorageError: if the listing fails.
    """
    models = list(list_timestamped_objects(bucket, LAYOUT.models_prefix, ".pkl", client))
    return sorted(models, key=lambda item: (item.timestamp, item.key), reverse=True)


def live_model_object(bucket: str, before: Optional[datetime] = None, client: Any = None) -> StoredObject:
    """The live model: the newest model artefact that is not rejected (created before `before`).

    This is the one definition of "newest model" that the serve stage, the champion selection
    and batch scoring use.

    Raises:
        NoObjectsError: no model artefact, or every one is rejected (or newer than `before`).
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed.
    """
    client = client or s3_client()
    models = list_models(bucket, client)
    rejected = rejected_model_keys(bucket, client) if models else set()
    live = live_model_among(models, rejected, before)
    if live is not None:
        return live
    when = f" created before {utc(before).isoformat()}" if before is not None else ""
    if not models:
        raise NoObjectsError(f"s3://{bucket}/{LAYOUT.models_prefix}: no .pkl object with a timestamp in its key")
    raise NoObjectsError(
        f"s3://{bucket}/{LAYOUT.models_prefix}: no model{when} that is not rejected "
        f"({len(models)} artefact(s), {len(rejected)} rejected)"
    )


def live_model_among(
    models: List[StoredObject], rejected: Set[str], before: Optional[datetime] = None
) -> Optional[StoredObject]:
    """`live_model_object`'s choice from models listed newest first (`list_models`) and the
    rejected keys (`rejected_model_keys`): lets the backfill list the bucket once for every week.
    """
    for item in models:
        if item.key not in rejected and (before is None or item.timestamp < utc(before)):
            return item
    return None


def get_live_model(bucket: str, before: Optional[datetime] = None, client: Any = None) -> Model:
    """Load the live model (see `live_model_object`), verified, with `artefact_key` set.

    Raises:
        NoObjectsError: no model to serve.
        ArtefactError: checksum missing or wrong, forbidden classes, or not a Model.
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed.
    """
    client = client or s3_client()
    return get_model(bucket, live_model_object(bucket, before, client).key, client)


def resolve_model_key(bucket: str, model: str, client: Any = None, keys: Optional[List[str]] = None) -> str:
    """The key of the one model artefact that `model` names: its key (with or without
    `s3://BUCKET/`), its artefact id (the lineage's `artefact_id`, the key's last `_xxxxxxxx`
    part), or a start of its id at least ARTEFACT.min_id_prefix characters long. The registry CLI and
    batch scoring name models this one way. Rejected models resolve too: naming one is a
    deliberate choice.

    Args:
        keys: the model keys to choose from, if already listed; else `models/` is listed.

    Raises:
        UnknownModelError: nothing under `models/` has that key or artefact id.
        AmbiguousModelError: several artefacts match (naming each key).
        NoSuchBucketError, AccessDeniedError, StorageError: if the listing fails.
    """
    ref = model.strip()
    if not ref:
        raise UnknownModelError("MODEL is empty: give an artefact id or a key under models/")
    keys = [item.key for item in list_models(bucket, client)] if keys is None else keys
    key = ref[len(f"s3://{bucket}/"):] if ref.startswith(f"s3://{bucket}/") else ref
    for matches in (
        [k for k in keys if k == key],
        [k for k in keys if artefact_id_of_key(k) == ref],
        [k for k in keys if len(ref) >= ARTEFACT.min_id_prefix and artefact_id_of_key(k).startswith(ref)],
    ):
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise AmbiguousModelError(
                f"MODEL {quote(model)} is ambiguous in s3://{bucket}/{LAYOUT.models_prefix}: it matches "
                f"{len(matches)} artefacts ({listed(sorted(matches))}); give the full key"
            )
    raise UnknownModelError(
        f"MODEL {quote(model)} is not an artefact id or key in s3://{bucket}/{LAYOUT.models_prefix} "
        f"({len(keys)} model(s); `python -m pipeline.registry {bucket} list` shows them)"
    )
