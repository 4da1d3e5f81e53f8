"""The registry's records: every rejection and restoration of a model, who made it, when and why.

Each status change is a new JSON object under `registry/<artefact file stem>/`; nothing is ever
deleted or overwritten. A model is rejected when its latest status change is a rejection.
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


def status_change_key(change: StatusChange) -> str:
    """Where a status change is recorded: a folder per artefact, a file per change."""
    stem = artefact_file_stem(change.artefact_key)
    return f"{LAYOUT.registry_prefix}{stem}/{utc(change.at):%Y-%m-%dT%H:%M:%S.%f}Z_{change.action}.json"


def put_status_change(bucket: str, change: StatusChange, client: Any = None) -> str:
    """Record a status change under a new key; never overwrites (conditional write).

    Returns:
        The key written.

    Raises:
        StorageError: S3 refused or failed, or a record already exists at the key.
    """
    client = client or s3_client()
    key = status_change_key(change)
    body = json.dumps(change.to_json(), sort_keys=True).encode("utf-8")
    put_new_object(client, bucket, key, body, "a status change", ContentType="application/json")
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
