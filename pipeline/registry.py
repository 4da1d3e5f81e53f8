"""Registry CLI: list the models, show one, reject it, restore it.

Usage: python -m pipeline.registry S3_BUCKET list
       python -m pipeline.registry S3_BUCKET show MODEL
       python -m pipeline.registry S3_BUCKET reject MODEL --reason TEXT
       python -m pipeline.registry S3_BUCKET restore MODEL [--reason TEXT]

MODEL is an artefact id (as in the lineage's `artefact_id`, or a start of it of 4 or more
characters) or its key. A rejected model is skipped by "newest" everywhere (the serve stage on
its next start, the champion selection, batch scoring) until it is restored; every change
records who (the AWS identity where STS answers, else the OS user), when and why, and nothing
is ever deleted or overwritten. `list` and `show` print their answer on stdout.

Exit code 0: done. Exit code 1: one ERROR line says why (bad arguments, an unknown or
ambiguous MODEL, a missing bucket, S3 failing). The steps live in `pipeline/model_registry/`.
"""
import sys

from pipeline.cli import CommandLine, Failures
from pipeline.model_registry.operations import USAGE, RegistryError, parse_args, run_command
from pipeline.storage.client import StorageError

CLI = CommandLine(
    "registry", parse_args,
    lambda arguments: run_command(arguments.bucket, arguments.command, arguments.model, arguments.reason),
    usage=USAGE, failures=[Failures((RegistryError, StorageError))],
    what=lambda arguments: f"registry {arguments.command}",
)

if __name__ == "__main__":
    sys.exit(CLI.main(sys.argv[1:]))
