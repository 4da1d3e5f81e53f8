"""Loading the model to serve: the live model, verified, and checked against this code's
scikit-learn. The serve stage's start-up (`start_up.py`) and the streaming Lambda handler
(pipeline/streaming/lambda_handler.py) load it with this one function, without the web
server's libraries.
"""
import logging

import sklearn

from pipeline.artefact.model import Model
from pipeline.artefact.signing import load_signing_keys
from pipeline.model_registry.live_model import live_model_object
from pipeline.storage.signed_artefacts import ArtefactError, get_model

log = logging.getLogger(__name__)


class ModelCompatibilityError(Exception):
    """The model artefact cannot be served faithfully by this code and these libraries."""


def check_library_versions(model: Model, installed: str = sklearn.__version__) -> None:
    """Refuse a model whose recorded scikit-learn version is not the installed one.

    A pickled estimator is only guaranteed to behave the same under the version that made it.

    Raises:
        ModelCompatibilityError: naming both versions.
    """
    recorded = model.library_versions.get("scikit-learn")
    if recorded != installed:
        raise ModelCompatibilityError(
            f"model artefact {model.artefact_key} was trained with scikit-learn {recorded}, but "
            f"scikit-learn {installed} is installed; refusing to serve it (retrain the model or "
            f"install scikit-learn=={recorded})"
        )


def load_model(bucket: str) -> Model:
    """The live model artefact in the bucket, verified, checked against the installed scikit-learn.

    A live artefact that fails verification stops the service: it never falls back to an
    older model by itself. The error says how to take the artefact out of service.

    Raises:
        SigningKeyError: MODEL_SIGNING_KEY is unset or malformed.
        StorageError: as `live_model.get_live_model`.
        ModelCompatibilityError: as `check_library_versions`.
    """
    keys = load_signing_keys()
    live = live_model_object(bucket)
    try:
        model = get_model(bucket, live.key, keys=keys)
    except ArtefactError as error:
        raise ArtefactError(
            f"{error}. To take it out of service, so that the newest model before it is served: "
            f"python -m pipeline.registry {bucket} reject {live.key} --reason TEXT"
        ) from error
    log.info(f"loaded model artefact s3://{bucket}/{model.artefact_key}")
    check_library_versions(model)
    return model
