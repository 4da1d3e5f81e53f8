"""The serve stage in order: load and check the live model, build the app, warm up, open the
port, then serve until a stop signal.

`serve` opens the port only once the model is loaded, verified and warmed up: Kubernetes takes
an open TCP port as "ready". `parse_args` reads the stage's command line;
`pipeline/serve_model.py` wires the two and maps failures to the exit code.
"""
import argparse
import logging
from typing import Optional, Sequence

from pipeline.artefact.model import Model
from pipeline.serve.api import create_app
from pipeline.serve.lifecycle import (
    SERVER_STACKS,
    freeze_start_up_objects,
    open_port,
    run_server,
    stop_on_signals,
    warm_up,
)
from pipeline.serve.model_loading import load_model
from pipeline.settings import API, S3, SERVE
from pipeline.storage.client import S3DeadlineError, StorageError, end_s3_deadline, start_s3_deadline
from pipeline.storage.report_files import get_report_html
from pipeline.utils import StageArgumentParser

USAGE = (
    "usage: python -m pipeline.serve_model S3_BUCKET [--host HOST] [--port PORT] [--access-log] "
    "[--server-stack {auto,pure-python}] [--drain-seconds SECONDS]"
)

log = logging.getLogger(__name__)


def serve(
    bucket: str,
    host: str = SERVE.default_host,
    port: int = SERVE.default_port,
    access_log: bool = False,
    server_stack: str = "auto",
    drain_seconds: float = 0.0,
) -> None:
    """Load, check and warm up the newest model, then serve it until SIGTERM or SIGINT.

    Args:
        bucket: the S3 bucket whose `models/` holds the artefacts.
        host: the address to listen on.
        port: the TCP port to listen on.
        access_log: log one line per request (costs throughput).
        server_stack: a key of `SERVER_STACKS`: "auto" (uvloop and httptools where
            installed) or "pure-python" (asyncio and h11).
        drain_seconds: how long to serve on after SIGTERM before stopping (see
            lifecycle.DrainingServer).

    Raises:
        SigningKeyError: MODEL_SIGNING_KEY is unset or malformed.
        StorageError: no model artefact, or it is unsigned, tampered with, corrupt or unreadable;
            S3DeadlineError: S3 was too slow to load it by S3.serve_deadline_seconds.
        ModelCompatibilityError: the artefact was trained with another scikit-learn version,
            or its tree walk disagrees with its estimator.
        OSError: the port cannot be opened.
        StopRequested: SIGTERM or SIGINT arrived before the service started serving.
    """
    stop_on_signals()
    start_s3_deadline("the serve stage", S3.serve_deadline_seconds)
    try:
        model = load_model(bucket)
        report = load_report(bucket, model)
    finally:
        end_s3_deadline()
    app = create_app(model, report, access_log=access_log)
    warm_up(model)
    freeze_start_up_objects()
    log.info(f"serving model {model}")
    sock = open_port(host, port)
    run_server(app, sock, SERVER_STACKS[server_stack], drain_seconds)


def load_report(bucket: str, model: Model) -> Optional[bytes]:
    """The model's HTML report, or None: an older model without one, or a report that cannot be
    read, which is logged and never stops the service (the report is for people, not for the shop).
    """
    try:
        html = get_report_html(bucket, model)
    except S3DeadlineError:
        raise  # the stage cannot start inside its limit: no report is no reason to go on
    except StorageError as error:
        log.warning(f"cannot read the report of model {model.artefact_id}; serving without it: {error}")
        return None
    if html is None:
        log.info(f"model {model.artefact_id} has no report: GET {API.model_report_path} answers 404")
    else:
        log.info(f"serving the model's report from s3://{bucket}/{model.report_key}")
    return html


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the CLI arguments.

    Raises:
        ValueError: with the reason, for any bad argument.
    """
    parser = StageArgumentParser(prog="serve_model.py")
    parser.add_argument("--host", default=SERVE.default_host)
    parser.add_argument("--port", type=int, default=SERVE.default_port)
    parser.add_argument("--access-log", action="store_true")
    parser.add_argument("--server-stack", choices=sorted(SERVER_STACKS), default="auto")
    parser.add_argument("--drain-seconds", type=float, default=0.0)
    args = parser.parse_stage_args(argv)
    if not args.host.strip():
        raise ValueError("--host is empty")
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if not 0 <= args.drain_seconds <= SERVE.max_drain_seconds:
        raise ValueError(f"--drain-seconds must be in 0..{SERVE.max_drain_seconds}, got {args.drain_seconds:g}")
    return args
