"""The whole pipeline on one machine: an embedded S3, the train stage, the serve stage.

Usage: python3 -m pipeline.run_local [--port PORT] [--s3-port PORT] [--weeks N]
       [--r2-error-threshold X] [--r2-warning-threshold Y] [--exit-after-request]
       [--bucket NAME [--endpoint-url URL] [--seed-synthetic-data]] [--with-batch] [--in-place]

Run from the repository root with any Python 3.11+ that has pip: it imports only the standard
library until the project's virtualenv `.venv/` has the pinned requirements (`--in-place` runs
with the current interpreter), then starts the S3 server with synthetic weeks, runs the train
stage, starts the serve stage, sends the example request and serves until Ctrl-C or SIGTERM,
which stop everything. Exit code 0: stopped as asked; 1: one ERROR line says what failed.
The steps live in `pipeline/local/`, run in order by `run.run_pipeline` (docs/operations.md).
"""
import logging
import signal
import sys
from typing import Sequence

from pipeline.local.bootstrap import BootstrapError, run_in_place_or_reexecute
from pipeline.local.processes import LocalProcessError
from pipeline.local.run import (
    EMBEDDED_S3_MODULES,
    RUNTIME_MODULES,
    LocalRunError,
    Stop,
    parse_args,
    raise_stop,
    run_pipeline,
)
from pipeline.utils import configure_logger

log = logging.getLogger(__name__)


def cli(argv: Sequence[str]) -> int:
    """The entry point: parse, set up the interpreter, run; map failures to exit codes."""
    configure_logger()
    try:
        settings = parse_args(argv)
    except ValueError as error:
        log.error(f"Invalid arguments passed to run_local.py: {error}")
        return 1
    if sys.version_info < (3, 11):
        log.error(f"run_local needs Python 3.11 or later (for the pinned requirements), not {sys.version.split()[0]}")
        return 1
    # Both handlers are installed explicitly: Python installs its own SIGINT handler only when
    # the process starts with SIGINT not ignored, and a run started in the background of a
    # script (`cmd &`), under nohup or by some CI runners inherits it ignored, so Ctrl-C
    # would do nothing. "Ctrl-C stops everything" must hold whatever the process inherited.
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, raise_stop)
    try:
        required = RUNTIME_MODULES + (EMBEDDED_S3_MODULES if settings.embedded_s3 else ())
        run_in_place_or_reexecute("pipeline.run_local", argv, required, settings.in_place)
        run_pipeline(settings)
    except (Stop, KeyboardInterrupt) as stop:
        log.info(f"stopped ({stop if isinstance(stop, Stop) else 'SIGINT'}); nothing left running")
        return 0
    except (LocalRunError, BootstrapError, LocalProcessError) as error:
        log.error(f"run_local failed: {error}")
        return 1
    except Exception as error:  # the one ERROR line must also cover the unforeseen
        log.error(f"run_local failed unexpectedly: {error!r}")
        return 1
    log.info("stopped; nothing left running")
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
