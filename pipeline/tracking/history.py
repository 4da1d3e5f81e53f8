"""The history: every train run already in a bucket logged to MLflow, from the models' lineage
and the runs' reports, so a team that turns tracking on sees its past weeks too.

A run is found by its report folder under `reports/` (a refused run has one too, with no model)
or by a model artefact made before reports existed; one already logged (a run tagged with its
artefact id) is skipped, so the command can be run again. Then each rejected model's version gets
its reason and `live` is put on the live model's version, as the train stage and the registry
CLI keep them.
"""
import json
import logging
from datetime import datetime
from typing import Any, Dict, List, Optional, Tuple

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.model_registry.operations import REJECTED, model_entries
from pipeline.settings import LAYOUT
from pipeline.storage.client import StorageError, get_object_bytes, s3_client, storage_error
from pipeline.storage.layout import artefact_file_stem
from pipeline.storage.signed_artefacts import ArtefactError, get_model
from pipeline.tracking.mlflow_client import TrackingConfig, TrackingError, mlflow_client, tracking_config
from pipeline.tracking.mlflow_runs import (
    FAILED,
    FINISHED,
    log_run,
    register_version,
    sync_live_alias,
    tag_status,
    tracked_run_id,
)
from pipeline.tracking.run_facts import run_facts
from pipeline.tracking.stage_hooks import REPORT_JSON

log = logging.getLogger(__name__)


def track_history(bucket: str) -> Tuple[int, int]:
    """Log every train run of the bucket not yet in MLflow; returns (runs logged, runs already there).

    Raises:
        TrackingError: tracking is off (MLFLOW_TRACKING_URI unset), or the server failed.
        NoSuchBucketError, AccessDeniedError, StorageError: S3 refused or failed.
    """
    config = tracking_config(bucket)
    if config is None:
        raise TrackingError("MLFLOW_TRACKING_URI is not set: there is no tracking server to fill")
    try:
        return _track_history(bucket, config)
    except (StorageError, TrackingError):
        raise
    except Exception as error:  # whatever the MLflow client raises: the server failed
        raise TrackingError(f"the tracking server {config.server} failed: {type(error).__name__}: "
                            f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}") from error


def _track_history(bucket: str, config: TrackingConfig) -> Tuple[int, int]:
    client, s3 = mlflow_client(config), s3_client()
    entries = list(reversed(model_entries(bucket)))
    keys_by_stem = {artefact_file_stem(entry.key): entry.key for entry in entries}
    folders = report_folders(bucket, s3)
    stems = sorted(set(folders) | set(keys_by_stem))
    logged = skipped = 0
    for stem in stems:
        artefact_id = stem.rsplit("_", 1)[-1]
        if tracked_run_id(client, config, artefact_id) is not None:
            skipped += 1
            continue
        files = {key.rsplit("/", 1)[-1]: get_object_bytes(s3, bucket, key)[0] for key in folders.get(stem, [])}
        report = json.loads(files[REPORT_JSON]) if REPORT_JSON in files else {}
        key = keys_by_stem.get(stem)
        lineage = _lineage(bucket, key, report)
        if lineage is None:
            continue
        failures = tuple((report.get("decision") or {}).get("failures") or ())
        uri = f"s3://{bucket}/{key}" if key else None
        facts = run_facts(lineage, report, {}, {}, failures, uri)
        run_id = log_run(client, config, facts, files, FAILED if failures else FINISHED,
                         f"{artefact_id} on {(lineage.get('dataset') or {}).get('key')}", _start_ms(lineage))
        if uri is not None:
            register_version(client, config, uri, run_id)
        log.info(f"tracked the run of {uri or 'refused model ' + artefact_id} as run {run_id}")
        logged += 1
    for entry in entries:
        if entry.status == REJECTED:
            tag_status(client, config, f"s3://{bucket}/{entry.key}", REJECTED, entry.history[-1].reason)
    sync_live_alias(client, config, bucket)
    return logged, skipped


def report_folders(bucket: str, client: Any) -> Dict[str, List[str]]:
    """Every report folder under `reports/` (its name: the model's file stem) with its keys."""
    folders: Dict[str, List[str]] = {}
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=LAYOUT.reports_prefix)
        for page in pages:
            for item in page.get("Contents", []):
                relative = item["Key"][len(LAYOUT.reports_prefix):]
                if relative.count("/") == 1:
                    folders.setdefault(relative.split("/", 1)[0], []).append(item["Key"])
    except (ClientError, BotoCoreError) as error:
        raise storage_error(error, bucket, LAYOUT.reports_prefix, "list") from error
    return folders


def _lineage(bucket: str, key: Optional[str], report: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """A persisted model's own lineage (verified), or for a refused run what its report says."""
    if key is None:
        names = ("artefact_id", "model_version", "dataset", "metrics", "hyperparameters", "created_at")
        return {name: report.get(name) for name in names} if report else None
    try:
        return get_model(bucket, key).lineage()
    except ArtefactError as error:
        log.warning(f"not tracked: s3://{bucket}/{key} cannot be loaded ({error})")
        return None


def _start_ms(lineage: Dict[str, Any]) -> Optional[int]:
    created = lineage.get("created_at")
    return int(datetime.fromisoformat(created).timestamp() * 1000) if isinstance(created, str) else None
