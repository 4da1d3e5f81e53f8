"""The registry's records: every rejection and restoration of a model, who made it, when and why.

Each status change is a new JSON object under `registry/<artefact file stem>/`; nothing is ever
deleted or overwritten. A model is rejected when its latest status change is a rejection.

A change is the model's n-th, and its key says so (`<n>_<artefact file stem>.json`, zero-padded;
the file stem gives the key the model's timestamp): it is written with a conditional write that
succeeds only where nothing is, so of two changes made at once from the same history (both
the n-th) exactly one is recorded, and the other fails with ConcurrentChangeError instead of
applying a check that no longer holds. Records from before this numbering
(`<UTC timestamp>_<action>.json`) are read as before and counted.
"""
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Dict, List, Optional, Set

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from pipeline.settings import LAYOUT
from pipeline.storage.client import StorageError, get_object_bytes, put_new_object, s3_client
from pipeline.storage.layout import artefact_file_stem, list_timestamped_objects, utc

REJECT, RESTORE = "reject", "restore"
STATUS_ACTIONS = (REJECT, RESTORE)


@dataclass(frozen=True)
class StatusChange:
    """One change of a model's status in the registry: who rejected or restored it, when, why."""

    artefact_key: str
    action: str
    reason: str
    who: str
    at: datetime

    def to_json(self) -> Dict[str, str]:
        return {"artefact_key": self.artefact_key, "action": self.action, "reason": self.reason,
                "who": self.who, "at": utc(self.at).isoformat()}

    @classmethod
    def from_json(cls, value: Dict[str, Any]) -> "StatusChange":
        """Raises: KeyError, ValueError, TypeError for a malformed record."""
        action = str(value["action"])
        if action not in STATUS_ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        return cls(str(value["artefact_key"]), action, str(value["reason"]), str(value["who"]),
                   utc(datetime.fromisoformat(str(value["at"]))))


class ConcurrentChangeError(StorageError):
    """Another status change of the model was recorded as the same change (the n-th) first."""


def status_change_key(artefact_key: str, number: int) -> str:
    """Where the `number`-th status change of a model is recorded: a folder per artefact, a
    file per change, named by its number and the artefact's file stem (its timestamp)."""
    stem = artefact_file_stem(artefact_key)
    return f"{LAYOUT.registry_prefix}{stem}/{number:06d}_{stem}.json"


def put_status_change(bucket: str, change: StatusChange, client: Any = None, number: Optional[int] = None) -> str:
    """Record a status change as the model's `number`-th; never overwrites (conditional write).

    Args:
        number: which change of the model this is: one more than the changes its check saw.
            By default one more than the changes recorded now.

    Returns:
        The key written.

    Raises:
        ConcurrentChangeError: the model's `number`-th change is already recorded.
        StorageError: S3 refused or failed.
    """
    client = client or s3_client()
    if number is None:
        number = len(list_status_changes(bucket, client).get(change.artefact_key, [])) + 1
    key = status_change_key(change.artefact_key, number)
    body = json.dumps(change.to_json(), sort_keys=True).encode("utf-8")
    put_new_object(client, bucket, key, body, f"change {number} of the model's status", ConcurrentChangeError,
                   ContentType="application/json")
    return key


def list_status_changes(bucket: str, client: Any = None) -> Dict[str, List[StatusChange]]:
    """Every recorded status change, by artefact key, oldest first.

    Raises:
        StorageError: S3 failed, or a record is not a status change (naming its key).
    """
    client = client or s3_client()
    changes: Dict[str, List[StatusChange]] = {}
    for item in list_timestamped_objects(bucket, LAYOUT.registry_prefix, ".json", client):
        body, _ = get_object_bytes(client, bucket, item.key)
        try:
            change = StatusChange.from_json(json.loads(body))
        except (ValueError, KeyError, TypeError) as error:
            raise StorageError(f"s3://{bucket}/{item.key}: not a status change record: {error}") from error
        changes.setdefault(change.artefact_key, []).append(change)
    for history in changes.values():
        history.sort(key=lambda change: change.at)
    return changes


def rejected_model_keys(bucket: str, client: Any = None) -> Set[str]:
    """The artefact keys whose latest status change is a rejection."""
    return {key for key, history in list_status_changes(bucket, client).items() if history[-1].action == REJECT}


def aws_identity() -> Optional[str]:
    """Who the AWS credentials belong to (the ARN from STS), or None when STS cannot say.

    The registry records it with every status change.
    """
    try:
        return str(boto3.client("sts").get_caller_identity()["Arn"])
    except (ClientError, BotoCoreError, KeyError):
        return None
