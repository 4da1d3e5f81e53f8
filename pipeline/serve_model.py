"""Serve stage: the newest model behind a REST API, ready only when the model is.

Usage: python -m pipeline.serve_model S3_BUCKET [--host HOST] [--port PORT] [--access-log]

Bodywork runs it as `python serve_model.py S3_BUCKET` from `pipeline/` with the repository
root on PYTHONPATH. At start-up it loads the live model artefact from `s3://S3_BUCKET/models/`
(checksum, signature under MODEL_SIGNING_KEY, contents and structure verified by the storage
module), refuses an artefact trained with
another scikit-learn version, warms the model up and checks its fast path against the
estimator, and only then opens the port: Kubernetes takes an open TCP port as "ready". Any
failure before that is one ERROR line and exit code 1, with the port never opened. SIGTERM
stops accepting connections, lets requests in flight finish, and exits 0.

The API is `api.py` (see docs/api.md); running the process is `serving.py`.
"""
import argparse
import logging
import sys
from typing import Sequence

from pipeline.api import create_app
from pipeline.model import Model
from pipeline.serving import (
    ModelCompatibilityError,
    check_library_versions,
    open_port,
    run_server,
    warm_up,
)
from pipeline.signing import SigningKeyError, load_signing_keys
from pipeline.storage import ArtefactError, StorageError, get_model, live_model_object
from pipeline.utils import StageArgumentParser, configure_logger

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 8000
USAGE = "usage: python -m pipeline.serve_model S3_BUCKET [--host HOST] [--port PORT] [--access-log]"

log = logging.getLogger(__name__)


def main(bucket: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, access_log: bool = False) -> None:
    """Load, check and warm up the newest model, then serve it until SIGTERM or SIGINT.

    Args:
        bucket: the S3 bucket whose `models/` holds the artefacts.
        host: the address to listen on.
        port: the TCP port to listen on.
        access_log: log one line per request (costs throughput).

    Raises:
        SigningKeyError: MODEL_SIGNING_KEY is unset or malformed.
        StorageError: no model artefact, or it is unsigned, tampered with, corrupt or unreadable.
        ModelCompatibilityError: the artefact was trained with another scikit-learn version,
            or its fast path disagrees with its estimator.
        OSError: the port cannot be opened.
    """
    model = load_model(bucket)
    app = create_app(model)
    warm_up(model)
    log.info(f"serving model {model}")
    sock = open_port(host, port)
    run_server(app, sock, access_log)


def load_model(bucket: str) -> Model:
    """The live model artefact in the bucket, verified, checked against the installed scikit-learn.

    A live artefact that fails verification stops the service: it never falls back to an
    older model by itself. The error says how to take the artefact out of service.

    Raises:
        SigningKeyError: MODEL_SIGNING_KEY is unset or malformed.
        StorageError: as `storage.get_live_model`.
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


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the CLI arguments.

    Raises:
        ValueError: with the reason, for any bad argument.
    """
    parser = StageArgumentParser(prog="serve_model.py")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_stage_args(argv)
    if not args.host.strip():
        raise ValueError("--host is empty")
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    return args


if __name__ == "__main__":
    configure_logger()
    try:
        arguments = parse_args(sys.argv[1:])
    except ValueError as error:
        log.error(f"Invalid arguments passed to serve_model.py: {error}; {USAGE}")
        sys.exit(1)
    try:
        main(arguments.bucket, arguments.host, arguments.port, arguments.access_log)
    except (StorageError, SigningKeyError, ModelCompatibilityError, OSError) as error:
        log.error(f"serve_model failed: {error}")
        sys.exit(1)
    except Exception as error:  # the one ERROR line must also cover the unforeseen
        log.error(f"serve_model failed unexpectedly: {error!r}")
        sys.exit(1)
