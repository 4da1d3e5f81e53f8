"""Registry CLI: list the models, show one, reject it, restore it.

Usage: python -m pipeline.registry S3_BUCKET list
       python -m pipeline.registry S3_BUCKET show MODEL
       python -m pipeline.registry S3_BUCKET reject MODEL --reason TEXT
       python -m pipeline.registry S3_BUCKET restore MODEL [--reason TEXT]
       python -m pipeline.registry S3_BUCKET track-history

MODEL is an artefact id (as in the lineage's `artefact_id`, or a start of it of 4 or more
characters) or its key. A rejected model is skipped by "newest" everywhere (the serve stage on
its next start, the champion selection, batch scoring) until it is restored; every change
records who (the AWS identity where STS answers, else the OS user), when and why, and nothing
is ever deleted or overwritten. `list` and `show` print their answer on stdout. With
MLFLOW_TRACKING_URI set, a rejection or restoration is also told to MLflow (the version's tag, the
alias `live`; a failure there is one WARNING), and `track-history` logs every past run of the
bucket to MLflow (docs/governance.md).

Exit code 0: done. Exit code 1: one ERROR line says why (bad arguments, an unknown or
ambiguous MODEL, a missing bucket, S3 failing, the tracking server failing the history). The
steps live in `pipeline/model_registry/` and `pipeline/tracking/`.
"""
import argparse
import sys

from pipeline.cli import CommandLine, Failures
from pipeline.model_registry.operations import TRACK_HISTORY, USAGE, RegistryError, parse_args, run_command
from pipeline.storage.client import StorageError
from pipeline.tracking.history import track_history
from pipeline.tracking.mlflow_client import TrackingError
from pipeline.tracking.stage_hooks import track_status_change


def run(arguments: argparse.Namespace) -> None:
    """The command; after a rejection or restoration, MLflow is told (if tracking is on)."""
    if arguments.command == TRACK_HISTORY:
        logged, skipped = track_history(arguments.bucket)
        print(f"tracked {logged} run(s); {skipped} already tracked")
        return
    change = run_command(arguments.bucket, arguments.command, arguments.model, arguments.reason)
    if change is not None:
        track_status_change(arguments.bucket, change.artefact_key, change.action, change.reason)


CLI = CommandLine(
    "registry", parse_args, run,
    usage=USAGE, failures=[Failures((RegistryError, StorageError, TrackingError))],
    what=lambda arguments: f"registry {arguments.command}",
)

if __name__ == "__main__":
    sys.exit(CLI.main(sys.argv[1:]))
