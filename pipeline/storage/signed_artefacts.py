"""Model artefacts on S3: persisted signed and never overwritten, loaded only once verified.

Each model artefact carries in its S3 metadata the SHA-256 of its pickled bytes and an
HMAC-SHA256 signature under the train stage's signing key over those bytes and the key the
artefact lives at (`pipeline/artefact/signing.py`). Loading refuses an object over the
artefact size limit before reading its body, verifies the checksum and the signature for the
key it was read from, unpickles only the classes a model artefact is made of, checks that the
model's own identity (creation time and id) is the one its key names, and checks the
estimator's structure before anything predicts with it. So a signed artefact copied to another
key (a rejected model under a newer name, an older one replayed as the newest) is refused.
Artefacts pickled before `pipeline/` had folders name the project's classes by their old paths
(`pipeline.model.Model`); they load as the same classes.
"""
import hashlib
import io
import pickle
from typing import Any, Optional

from pipeline.artefact.model import InvalidModelError, Model, check_model_structure
from pipeline.artefact.signing import SignatureError, SigningKeys, load_signing_keys
from pipeline.settings import ARTEFACT, LAYOUT
from pipeline.storage.client import (
    ObjectTooLargeError,
    StorageError,
    get_object_bytes,
    put_new_object,
    s3_client,
)
from pipeline.storage.layout import model_key
from pipeline.utils import quote

# What a model artefact may be made of: the project's containers, the estimator and the
# numpy and datetime pieces their pickles name. Anything else is refused before it is built.
_ALLOWED_GLOBALS = frozenset(
    {
        ("pipeline.artefact.model", "Model"),
        ("pipeline.artefact.model", "TaskMetrics"),
        ("pipeline.artefact.model", "DatasetLineage"),
        ("pipeline.artefact.model", "MonotonicityReport"),
        ("pipeline.artefact.model", "ProductMonotonicity"),
        ("pipeline.artefact.features", "ProductCodeEncoding"),
        ("pipeline.artefact.calibration", "Calibration"),
        ("pipeline.artefact.calibration", "ProductSteps"),
        ("pipeline.artefact.calibration", "UpperBound"),
        ("pipeline.artefact.calibration", "TrainedRange"),
        ("sklearn.tree._classes", "DecisionTreeRegressor"),
        ("sklearn.tree._tree", "Tree"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("datetime", "datetime"),
        ("datetime", "timezone"),
        ("datetime", "timedelta"),
    }
)
# Where the project's classes were before `pipeline/` had folders: artefacts pickled then name
# them so, and keep loading as the same classes.
_FORMER_PATHS = {
    **{("pipeline.model", name): ("pipeline.artefact.model", name)
       for name in ("Model", "TaskMetrics", "DatasetLineage", "MonotonicityReport", "ProductMonotonicity")},
    ("pipeline.features", "ProductCodeEncoding"): ("pipeline.artefact.features", "ProductCodeEncoding"),
}


class ArtefactError(StorageError):
    """A model artefact failed its integrity check or is not a Model."""


def put_model(bucket: str, model: Model, client: Any = None, keys: Optional[SigningKeys] = None) -> str:
    """Persist a model artefact under a new timestamped key, signed; never overwrites.

    The SHA-256 of the pickled bytes and their signature under the current signing key (with
    the key's id) go into the object's metadata. The write is conditional
    (`If-None-Match: *`), so even two runs that picked the same key cannot replace each
    other's artefact.

    Args:
        keys: the signing keys; read from MODEL_SIGNING_KEY when not given.

    Returns:
        The key written; also set as `model.artefact_key`.

    Raises:
        SigningKeyError: no signing key given and MODEL_SIGNING_KEY unset or malformed.
        ArtefactError: if an object already exists at the key, or the artefact is over the
            artefact size limit (no reader would load it).
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed.
    """
    keys = keys or load_signing_keys()
    client = client or s3_client()
    key = model_key(model)
    model.artefact_key = key
    body = pickle.dumps(model, protocol=ARTEFACT.pickle_protocol)
    if len(body) > ARTEFACT.max_artefact_bytes:
        raise ArtefactError(
            f"s3://{bucket}/{key}: the artefact is {len(body):,} bytes, over the artefact size limit of "
            f"{ARTEFACT.max_artefact_bytes:,} bytes, which every reader refuses; not persisting it")
    digest = hashlib.sha256(body).hexdigest()
    put_new_object(client, bucket, key, body, "an artefact", ArtefactError,
                   Metadata={LAYOUT.sha256_metadata_key: digest, **keys.sign(body, key).metadata()})
    return key


def get_model(bucket: str, key: str, client: Any = None, keys: Optional[SigningKeys] = None) -> Model:
    """Load one model artefact by key, verifying size, checksum, signature, contents, identity
    and structure.

    Nothing is read past the artefact size limit, nothing is unpickled before the checksum and
    the signature for `key` are verified, and nothing predicts with a model whose creation time
    and id are not those `key` names or whose estimator fails `check_model_structure`.

    Args:
        keys: the keys that verify; read from MODEL_SIGNING_KEY when not given.

    Raises:
        SigningKeyError: no keys given and MODEL_SIGNING_KEY unset or malformed.
        ArtefactError: over the artefact size limit, checksum missing or wrong, unsigned, signed
            over the bytes only, wrongly signed or signed for another key, forbidden classes,
            not a Model, a model whose key is another, or a malformed estimator.
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed.
    """
    keys = keys or load_signing_keys()
    client = client or s3_client()
    uri = f"s3://{bucket}/{key}"
    try:
        body, response = get_object_bytes(client, bucket, key, max_bytes=ARTEFACT.max_artefact_bytes)
    except ObjectTooLargeError as error:
        raise ArtefactError(f"{error} (the artefact size limit)") from None
    metadata = response.get("Metadata", {})
    expected = metadata.get(LAYOUT.sha256_metadata_key)
    if not expected:
        raise ArtefactError(f"{uri}: no SHA-256 checksum in its metadata; refusing to load it")
    actual = hashlib.sha256(body).hexdigest()
    if actual != expected:
        raise ArtefactError(
            f"{uri}: SHA-256 of the artefact is {actual}, its metadata says {quote(expected)}; "
            "the artefact was altered or corrupted, refusing to load it"
        )
    try:
        keys.verify(body, metadata, key)
    except SignatureError as error:
        raise ArtefactError(f"{uri}: {error}; refusing to load it") from None
    try:
        model = _RestrictedUnpickler(io.BytesIO(body)).load()
    except ArtefactError as error:
        raise ArtefactError(f"{uri}: {error}") from None
    except Exception as error:  # any failure to rebuild the object means an unusable artefact
        raise ArtefactError(f"{uri}: cannot unpickle the artefact: {error!r}") from error
    if not isinstance(model, Model):
        raise ArtefactError(f"{uri}: the artefact is a {type(model).__name__}, not a Model")
    _check_identity(model, uri, key)
    try:
        check_model_structure(model)
    except InvalidModelError as error:
        raise ArtefactError(f"{uri}: malformed model: {error}; refusing to load it") from None
    except Exception as error:  # a state no trained model has may fail in any way: still refused
        raise ArtefactError(f"{uri}: malformed model: {error!r}; refusing to load it") from None
    model.artefact_key = key
    return model


def _check_identity(model: Model, uri: str, key: str) -> None:
    """Refuse a model whose own creation time and id are not those its key names: what it is
    must be where it lives, as what is signed is."""
    try:
        own_key = model_key(model)
        created = model.created_at.isoformat()
    except Exception as error:  # a state no trained model has may fail in any way: still refused
        raise ArtefactError(f"{uri}: the artefact's creation time or id is unusable: {error!r}; refusing to load it")
    if own_key != key:
        raise ArtefactError(
            f"{uri}: the artefact is model {quote(model.artefact_id)} created at {created}, whose key is "
            f"{quote(own_key)}, not the key it was read from; refusing to load it")


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only the classes of _ALLOWED_GLOBALS, found at their current paths."""

    def find_class(self, module: str, name: str) -> Any:
        current = _FORMER_PATHS.get((module, name), (module, name))
        if current not in _ALLOWED_GLOBALS:
            raise ArtefactError(
                f"the pickle names {module}.{name}, which a model artefact may not contain; "
                "refusing to load it"
            )
        return super().find_class(*current)
