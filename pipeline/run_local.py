"""The whole pipeline on one machine: an embedded S3, the train stage, the serve stage.

Usage: python3 -m pipeline.run_local [--port PORT] [--s3-port PORT] [--weeks N]
       [--r2-error-threshold X] [--r2-warning-threshold Y] [--exit-after-request]
       [--bucket NAME [--endpoint-url URL] [--seed-synthetic-data]] [--with-batch] [--with-mlflow]
       [--with-stream [--stream-port PORT]] [--in-place]

Run from the repository root with any Python 3.11+ that has pip: it imports only the standard
library until the project's virtualenv `.venv/` has the pinned requirements (`--in-place` runs
with the current interpreter), then starts the S3 server with synthetic weeks, runs the train
stage, starts the serve stage, sends the example request and serves until Ctrl-C or SIGTERM,
which stop everything. Exit code 0: stopped as asked; 1: one ERROR line says what failed.
The steps live in `pipeline/local/`, run in order by `run.run_pipeline` (docs/operations.md).
"""
import signal
import sys
from typing import Optional, Sequence

from pipeline.cli import CommandLine, Failures
from pipeline.local.bootstrap import BootstrapError, run_in_place_or_reexecute
from pipeline.local.processes import LocalProcessError
from pipeline.local.run import (
    EMBEDDED_S3_MODULES,
    MLFLOW_SERVER_MODULES,
    RUNTIME_MODULES,
    LocalRunError,
    Settings,
    Stop,
    parse_args,
    raise_stop,
    run_pipeline,
)


def python_too_old(settings: Settings) -> Optional[str]:
    """Why this interpreter cannot run the pipeline, or None if it can."""
    if sys.version_info < (3, 11):
        return f"run_local needs Python 3.11 or later (for the pinned requirements), not {sys.version.split()[0]}"
    return None


def cli(argv: Sequence[str]) -> int:
    """The entry point: parse, set up the interpreter, run; map failures to exit codes."""
    def run(settings: Settings) -> None:
        # Both handlers are installed explicitly: Python installs its own SIGINT handler only when
        # the process starts with SIGINT not ignored, and a run started in the background of a
        # script (`cmd &`), under nohup or by some CI runners inherits it ignored, so Ctrl-C
        # would do nothing. "Ctrl-C stops everything" must hold whatever the process inherited.
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop_signal, raise_stop)
        required = RUNTIME_MODULES + (EMBEDDED_S3_MODULES if settings.embedded_s3 else ()) \
            + (MLFLOW_SERVER_MODULES if settings.with_mlflow else ())
        run_in_place_or_reexecute("pipeline.run_local", argv, required, settings.in_place)
        run_pipeline(settings)

    return CommandLine(
        "run_local", parse_args, run, usage=None, check=python_too_old,
        failures=[Failures((LocalRunError, BootstrapError, LocalProcessError))],
        stops=(Stop, KeyboardInterrupt),
        stopped=lambda stop: f"stopped ({stop if isinstance(stop, Stop) else 'SIGINT'}); nothing left running",
        done="stopped; nothing left running",
    ).main(argv)


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
