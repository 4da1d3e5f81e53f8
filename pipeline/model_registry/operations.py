"""The model registry's operations: every model with its status, finding one, rejecting and
restoring it.

A model's status is one of:

- live: the newest model that is not rejected, the one the serve stage, the champion selection
  and batch scoring use (`live_model.live_model_object`);
- rejected: its latest status change in `registry/` is a rejection;
- superseded: not rejected, but a newer model is live.

`list` and `show` show a model that fails verification (unsigned, tampered with, or a copy of a
signed artefact at another key) as `refused`, whatever its status: no stage loads it. If it is
the newest model that is not rejected, they also log a WARNING: the serve stage will not start
until it is rejected.

Rejecting or restoring writes a new status-change record under `registry/` (who, when, why);
nothing is ever deleted or overwritten. `run_command` runs one command of the registry CLI
(`pipeline/registry.py`), whose arguments `parse_args` reads.
"""
import argparse
import getpass
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import List, Optional, Sequence, Tuple

from pipeline.artefact.model import Model
from pipeline.model_registry.live_model import list_models, live_model_object, resolve_model_key
from pipeline.model_registry.records import (
    REJECT,
    RESTORE,
    ConcurrentChangeError,
    StatusChange,
    aws_identity,
    list_status_changes,
    put_status_change,
)
from pipeline.storage.layout import NoObjectsError, StoredObject, artefact_id_of_key
from pipeline.storage.report_files import list_report_keys
from pipeline.storage.signed_artefacts import ArtefactError, get_model
from pipeline.utils import StageArgumentParser, quote

LIVE, REJECTED, SUPERSEDED = "live", "rejected", "superseded"
# Shown instead of its status for a model no stage will load (it fails verification).
REFUSED = "refused"
# The history command: every past run logged to MLflow (run by pipeline/registry.py with
# pipeline/tracking/history.py, which this folder does not import).
TRACK_HISTORY = "track-history"
COMMANDS = ("list", "show", REJECT, RESTORE, TRACK_HISTORY)
USAGE = (
    "usage: python -m pipeline.registry S3_BUCKET list | show MODEL | reject MODEL --reason TEXT | "
    "restore MODEL [--reason TEXT] | track-history (MODEL: an artefact id or its key)"
)
DEFAULT_RESTORE_REASON = "restored"

log = logging.getLogger(__name__)


class RegistryError(ValueError):
    """MODEL names no model or several, or the status change makes no sense for it."""


@dataclass(frozen=True)
class ModelEntry:
    """A model artefact in the bucket, its status and its history of status changes."""

    key: str
    artefact_id: str
    created: datetime
    status: str
    history: Tuple[StatusChange, ...]


def model_entries(bucket: str) -> List[ModelEntry]:
    """Every model artefact in the bucket with its status, newest first.

    Raises:
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed.
    """
    models = list_models(bucket)
    changes = list_status_changes(bucket) if models else {}
    entries, live_found = [], False
    for item in models:
        history = tuple(changes.get(item.key, []))
        if history and history[-1].action == REJECT:
            status = REJECTED
        elif not live_found:
            status, live_found = LIVE, True
        else:
            status = SUPERSEDED
        entries.append(ModelEntry(item.key, artefact_id_of_key(item.key), item.timestamp, status, history))
    return entries


def resolve_model(bucket: str, entries: List[ModelEntry], reference: str) -> ModelEntry:
    """The one model that `reference` names, as `live_model.resolve_model_key` reads it (one way for
    the registry and batch scoring).

    Raises:
        UnknownModelError, AmbiguousModelError: no model or more than one matches, naming the
            candidates.
    """
    key = resolve_model_key(bucket, reference, keys=[entry.key for entry in entries])
    return next(entry for entry in entries if entry.key == key)


def list_lines(bucket: str) -> List[str]:
    """One line per model, newest first: id, created, training dataset, test r² and MAE, status.

    Raises:
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed.
    """
    lines = [f"{'id':<10} {'created (UTC)':<20} {'status':<10} {'r²':>7} {'MAE':>7}  training dataset"]
    for entry in model_entries(bucket):
        model, problem = _load(bucket, entry.key)
        created = f"{entry.created:%Y-%m-%d %H:%M:%S}"
        if model is None:
            # Not loadable (a copy at another key, unsigned, tampered with): every stage refuses it.
            lines.append(f"{entry.artefact_id:<10} {created:<20} {REFUSED:<10} {'?':>7} {'?':>7}  "
                         f"(refused: {problem})")
            if entry.status == LIVE:
                log.warning(refused_live_warning(bucket, entry, problem))
            continue
        lines.append(
            f"{entry.artefact_id:<10} {created:<20} {entry.status:<10} {model.metrics.r_squared:>7.4f} "
            f"{model.metrics.mean_absolute_error:>7.4f}  {model.dataset.key}"
        )
    return lines


def show_lines(bucket: str, reference: str) -> List[str]:
    """What `show MODEL` prints: status, lineage, where its report is, its status history.

    Raises:
        RegistryError: MODEL names no model or several.
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed.
    """
    entry = resolve_model(bucket, model_entries(bucket), reference)
    model, problem = _load(bucket, entry.key)
    status = entry.status if model is not None else REFUSED
    lines = [f"model {entry.artefact_id}: {status}", f"artefact: s3://{bucket}/{entry.key}"]
    if model is None and entry.status == LIVE:
        log.warning(refused_live_warning(bucket, entry, problem))
    report_keys = list_report_keys(bucket, entry.key)
    if report_keys:
        folder = report_keys[0].rsplit("/", 1)[0]
        lines.append(f"report: s3://{bucket}/{folder}/ ({', '.join(k.rsplit('/', 1)[-1] for k in report_keys)})")
    else:
        lines.append("report: none (the model was made before reports existed)")
    if model is None:
        lines.append(f"lineage: refused ({problem})")
    else:
        lines.append("lineage: " + json.dumps(model.lineage(), indent=1, sort_keys=True, default=str))
    lines.append(f"status history ({len(entry.history)} change(s)):")
    lines += [f"  {c.at.isoformat()} {c.action} by {c.who}: {c.reason}" for c in entry.history]
    return lines


def change_status(bucket: str, reference: str, action: str, reason: str, who: Optional[str] = None) -> StatusChange:
    """Record a rejection or a restoration of the model `reference` names.

    Args:
        action: REJECT or RESTORE.
        reason: why, in words; required.
        who: who does it; by default the AWS identity (STS) or, failing that, the OS user.

    Raises:
        RegistryError: MODEL names no model or several, the reason is empty, the model is
            already rejected (reject) or is not rejected (restore), or another change of it
            was recorded between the check and the write (nothing is recorded then).
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed.
    """
    if action not in (REJECT, RESTORE):
        raise RegistryError(f"unknown action {action!r}")
    if not reason.strip():
        raise RegistryError("--reason is empty: say why")
    entry = resolve_model(bucket, model_entries(bucket), reference)
    if action == REJECT and entry.status == REJECTED:
        raise RegistryError(f"model {entry.artefact_id} is already rejected ({quote(entry.history[-1].reason)})")
    if action == RESTORE and entry.status != REJECTED:
        raise RegistryError(f"model {entry.artefact_id} is not rejected (it is {entry.status}); nothing to restore")
    change = StatusChange(entry.key, action, reason.strip(), who or current_identity(), datetime.now(timezone.utc))
    try:
        key = put_status_change(bucket, change, number=len(entry.history) + 1)
    except ConcurrentChangeError as error:
        raise RegistryError(
            f"model {entry.artefact_id} was changed by another registry command at the same time; this "
            f"{action} was not recorded: run `show` to see its status ({error})") from error
    log.info(f"{action} of model {entry.artefact_id} recorded at s3://{bucket}/{key} "
             f"(by {quote(change.who)}: {quote(change.reason)})")
    return change


def live_model_after_change(bucket: str) -> Optional[StoredObject]:
    """The live model now, or None (with a WARNING) when every model is rejected."""
    try:
        return live_model_object(bucket)
    except NoObjectsError as error:
        log.warning(f"no live model is left, so the serve stage cannot start: {error}")
        return None


def current_identity() -> str:
    """Who is acting: the AWS identity's ARN where STS answers, else the OS user."""
    identity = aws_identity()
    if identity:
        return identity
    try:
        return f"os-user:{getpass.getuser()}"
    except (KeyError, OSError):
        return "unknown"


def refused_live_warning(bucket: str, entry: ModelEntry, problem: str) -> str:
    """What to say when the newest model that is not rejected cannot be loaded."""
    return (f"model {entry.artefact_id} is the newest that is not rejected, but every stage refuses it "
            f"({problem}): the serve stage will not start until it is rejected: python -m pipeline.registry "
            f"{bucket} reject {entry.artefact_id} --reason '...'")


def _load(bucket: str, key: str) -> Tuple[Optional[Model], str]:
    try:
        return get_model(bucket, key), ""
    except ArtefactError as error:
        return None, str(error)


# --- the registry CLI's commands ------------------------------------------------------------


def run_command(bucket: str, command: str, model: str = "", reason: str = "") -> Optional[StatusChange]:
    """Run one registry command against the bucket; returns the status change reject or restore made.

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
        return change
    return None


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
    if args.command in ("list", TRACK_HISTORY) and args.model:
        raise ValueError(f"{args.command} takes no MODEL")
    if args.command not in ("list", TRACK_HISTORY) and not args.model.strip():
        raise ValueError(f"{args.command} needs a MODEL")
    if args.command == REJECT and not args.reason.strip():
        raise ValueError("reject needs --reason TEXT: say why")
    return args
