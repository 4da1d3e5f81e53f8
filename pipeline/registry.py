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
ambiguous MODEL, a missing bucket, S3 failing). The steps live in `governance.py`.
"""
import argparse
import logging
import sys
from typing import Sequence

from pipeline.model_registry.operations import (
    RegistryError,
    change_status,
    list_lines,
    live_model_after_change,
    show_lines,
)
from pipeline.model_registry.records import REJECT, RESTORE
from pipeline.storage.client import StorageError
from pipeline.utils import StageArgumentParser, configure_logger

COMMANDS = ("list", "show", REJECT, RESTORE)
USAGE = (
    "usage: python -m pipeline.registry S3_BUCKET list | show MODEL | reject MODEL --reason TEXT | "
    "restore MODEL [--reason TEXT] (MODEL: an artefact id or its key)"
)
DEFAULT_RESTORE_REASON = "restored"

log = logging.getLogger(__name__)


def main(bucket: str, command: str, model: str = "", reason: str = "") -> None:
    """Run one registry command against the bucket.

    Raises:
        RegistryError: MODEL names no model or several, or the change does not apply to it.
        StorageError: the bucket does not exist, or S3 refused or failed.
    """
    if command == "list":
        print("\n".join(list_lines(bucket)))
    elif command == "show":
        print("\n".join(show_lines(bucket, model)))
    else:
        change = change_status(bucket, model, command, reason or DEFAULT_RESTORE_REASON)
        live = live_model_after_change(bucket)
        if live is not None:
            log.info(f"live model now: s3://{bucket}/{live.key}; the serve stage serves it from its next start")
        print(f"{change.action} {change.artefact_key}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the CLI arguments.

    Raises:
        ValueError: with the reason, for any bad argument.
    """
    parser = StageArgumentParser(prog="registry.py")
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("model", nargs="?", default="")
    parser.add_argument("--reason", default="")
    args = parser.parse_stage_args(argv)
    if args.command == "list" and args.model:
        raise ValueError("list takes no MODEL")
    if args.command != "list" and not args.model.strip():
        raise ValueError(f"{args.command} needs a MODEL")
    if args.command == REJECT and not args.reason.strip():
        raise ValueError("reject needs --reason TEXT: say why")
    return args


if __name__ == "__main__":
    configure_logger()
    try:
        arguments = parse_args(sys.argv[1:])
    except ValueError as error:
        log.error(f"Invalid arguments passed to registry.py: {error}; {USAGE}")
        sys.exit(1)
    try:
        main(arguments.bucket, arguments.command, arguments.model, arguments.reason)
    except (RegistryError, StorageError) as error:
        log.error(f"registry {arguments.command} failed: {error}")
        sys.exit(1)
    except Exception as error:  # the one ERROR line must also cover the unforeseen
        log.error(f"registry {arguments.command} failed unexpectedly: {error!r}")
        sys.exit(1)
