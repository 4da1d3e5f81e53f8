"""Serve stage: the newest model behind a REST API, ready only when the model is.

Usage: python -m pipeline.serve_model S3_BUCKET [--host HOST] [--port PORT] [--access-log]
                                                [--server-stack {auto,pure-python}]
                                                [--drain-seconds SECONDS]

Bodywork runs it as `python serve_model.py S3_BUCKET` from `pipeline/` with the repository
root on PYTHONPATH. It loads the live model (verified: checksum, signature under
MODEL_SIGNING_KEY, contents, structure, scikit-learn version), warms it up, and only then opens
the port. Any failure before that is one ERROR line and exit code 1, the port never opened.
SIGTERM lets requests in flight finish and exits 0 (after `--drain-seconds N` of serving on).
The steps live in `pipeline/serve/`, run in order by `start_up.serve` (docs/api.md).
"""
import sys

from pipeline.artefact.signing import SigningKeyError
from pipeline.cli import CommandLine, Failures
from pipeline.serve.lifecycle import ModelCompatibilityError, StopRequested
from pipeline.serve.start_up import USAGE, parse_args, serve
from pipeline.storage.client import StorageError

CLI = CommandLine(
    "serve_model", parse_args,
    lambda arguments: serve(
        arguments.bucket, arguments.host, arguments.port, arguments.access_log, arguments.server_stack,
        arguments.drain_seconds,
    ),
    usage=USAGE, failures=[Failures((StorageError, SigningKeyError, ModelCompatibilityError, OSError))],
    stops=(StopRequested,), stopped=lambda stop: f"{stop} before the service started serving",
)

if __name__ == "__main__":
    sys.exit(CLI.main(sys.argv[1:]))
