"""What the tracking server is told: a train run as an MLflow run, a persisted model as a version
of the registered model (its source the artefact's S3 URI), the alias `live` on the version of
the live model, and a rejection as a tag of its version.

Every function takes an `MlflowClient` (`mlflow_client.mlflow_client`) and the `TrackingConfig`.
The alias follows `live_model.live_model_object`, the one rule of what is live: MLflow is told,
it never decides. A model with no version yet (trained before tracking was on, or when the
server was down) is registered when it is first needed, so no run depends on an earlier one
having been tracked.
"""
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional

from pipeline.model_registry.live_model import live_model_object
from pipeline.model_registry.operations import LIVE, REJECTED
from pipeline.storage.layout import NoObjectsError, artefact_id_of_key
from pipeline.tracking.mlflow_client import TrackingConfig
from pipeline.tracking.run_facts import RunFacts

FINISHED, FAILED = "FINISHED", "FAILED"
# Version tags: which artefact a version is, and why it was rejected.
ARTEFACT_ID_TAG, ARTEFACT_URI_TAG, REJECTED_TAG, STATUS_TAG = "artefact_id", "artefact_uri", "rejected_reason", "status"
# MLflow's log_batch takes at most 100 parameters or tags and 1,000 metrics a call.
_BATCH = 100


def experiment_id(client: Any, config: TrackingConfig) -> str:
    """The id of the experiment runs go to, created if it does not exist yet."""
    experiment = client.get_experiment_by_name(config.experiment)
    if experiment is not None:
        return str(experiment.experiment_id)
    return str(client.create_experiment(config.experiment))


def log_run(client: Any, config: TrackingConfig, facts: RunFacts, files: Dict[str, bytes], status: str,
            run_name: str, start_ms: Optional[int] = None) -> str:
    """One MLflow run with the facts and the report's files as artifacts; returns its id."""
    from mlflow.entities import Metric, Param, RunTag

    run = client.create_run(experiment_id(client, config), start_time=start_ms, run_name=run_name)
    run_id = str(run.info.run_id)
    now = start_ms or int(time.time() * 1000)
    params = [Param(k, v) for k, v in facts.params.items()]
    tags = [RunTag(k, v) for k, v in facts.tags.items()]
    metrics = [Metric(k, v, now, 0) for k, v in facts.metrics.items()]
    for start in range(0, max(len(params), len(tags), len(metrics)), _BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + _BATCH], params=params[start:start + _BATCH],
                         tags=tags[start:start + _BATCH])
    if files:
        with tempfile.TemporaryDirectory() as folder:
            for name, body in files.items():
                (Path(folder) / name).write_bytes(body)
            client.log_artifacts(run_id, folder)
    client.set_terminated(run_id, status)
    return run_id


def tracked_run_id(client: Any, config: TrackingConfig, artefact_id: str) -> Optional[str]:
    """The id of a run already logged for this artefact id, if any (the history skips those)."""
    experiment = client.get_experiment_by_name(config.experiment)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.{ARTEFACT_ID_TAG} = '{artefact_id}'",
                              max_results=1)
    return str(runs[0].info.run_id) if runs else None


def model_version(client: Any, config: TrackingConfig, artefact_uri: str) -> Optional[Any]:
    """The version of the registered model whose source is this artefact, if there is one."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{config.model_name}'")
    except MlflowException:
        return None
    return next((v for v in versions if v.source == artefact_uri), None)


def register_version(client: Any, config: TrackingConfig, artefact_uri: str, run_id: Optional[str]) -> Any:
    """The artefact's version of the registered model: found, or created with the artefact's S3 URI
    as its source (MLflow never holds a copy of the model: the signed artefact is the one served)."""
    from mlflow.exceptions import MlflowException

    existing = model_version(client, config, artefact_uri)
    if existing is not None:
        return existing
    try:
        client.get_registered_model(config.model_name)
    except MlflowException:
        client.create_registered_model(
            config.model_name, description="Versions of the time-to-dispatch models persisted in S3; "
            "the S3 artefacts and their signatures decide what is served, not this registry.")
    artefact_id = artefact_id_of_key(artefact_uri)
    return client.create_model_version(
        config.model_name, source=artefact_uri, run_id=run_id,
        tags={ARTEFACT_ID_TAG: artefact_id, ARTEFACT_URI_TAG: artefact_uri}, await_creation_for=0)


def sync_live_alias(client: Any, config: TrackingConfig, bucket: str) -> Optional[str]:
    """Point the alias `live` at the version of the live model (registering it if needed); with no
    live model, remove the alias. Returns the version the alias points at, if any."""
    from mlflow.exceptions import MlflowException

    try:
        live = live_model_object(bucket)
    except NoObjectsError:
        try:
            client.delete_registered_model_alias(config.model_name, LIVE)
        except MlflowException:
            pass  # no such alias (or model): nothing points at a model that is not live
        return None
    version = register_version(client, config, f"s3://{bucket}/{live.key}", None)
    client.set_registered_model_alias(config.model_name, LIVE, version.version)
    return str(version.version)


def tag_status(client: Any, config: TrackingConfig, artefact_uri: str, status: str, reason: str) -> None:
    """Record a rejection (its reason as the tag `rejected_reason`) or a restoration on the
    artefact's version, registering it if needed."""
    version = register_version(client, config, artefact_uri, None)
    client.set_model_version_tag(config.model_name, version.version, STATUS_TAG, status)
    if status == REJECTED:
        client.set_model_version_tag(config.model_name, version.version, REJECTED_TAG, reason)
    elif REJECTED_TAG in (version.tags or {}):
        client.delete_model_version_tag(config.model_name, version.version, REJECTED_TAG)
