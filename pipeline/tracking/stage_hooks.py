"""Where the stages meet experiment tracking: the train stage hands over what its run found
(`TrainingRun`, filled as the run goes) and calls `track_training` once it has ended; the
registry CLI calls `track_status_change` after a rejection or a restoration.

Tracking never decides and never costs the week: with MLFLOW_TRACKING_URI unset nothing happens;
when the server is down, refuses or is slow, one WARNING names the server and what was not
recorded, within TRACKING.budget_seconds, and the model stays judged and persisted as it was.
Only `required=True` (the train CLI's `--tracking-required`) makes a failure the run's failure.
"""
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from pipeline.artefact.model import Model
from pipeline.model_registry.operations import LIVE, REJECTED
from pipeline.model_registry.records import REJECT
from pipeline.settings import TRACKING
from pipeline.tracking.mlflow_client import TrackingConfig, TrackingError, mlflow_client, tracking_config, within_budget
from pipeline.tracking.mlflow_runs import FAILED, FINISHED, log_run, register_version, sync_live_alias, tag_status
from pipeline.tracking.run_facts import run_facts

# The report file whose content gives the run's metrics.
REPORT_JSON = "report.json"

log = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    """What a train run found, filled in by the stage as it goes: the model and its report once
    evaluated, the gates that refused it, its key once persisted."""

    bucket: str
    params: Dict[str, Any] = field(default_factory=dict)
    metrics: Dict[str, float] = field(default_factory=dict)
    model: Optional[Model] = None
    report_files: Dict[str, bytes] = field(default_factory=dict)
    failures: Tuple[str, ...] = ()
    artefact_key: Optional[str] = None


def check_tracking(bucket: str) -> None:
    """With tracking on, that the server answers: for `--tracking-required`, before any work.

    Raises:
        TrackingError: the server is down, refuses or is slow.
    """
    config = tracking_config(bucket)
    if config is not None:
        within_budget(lambda: mlflow_client(config).search_experiments(max_results=1),
                      TRACKING.budget_seconds, "anything (checked before training)", config)


def track_training(run: TrainingRun, required: bool = False) -> None:
    """Log the run (refused ones too) and, for a persisted model, its model version and the alias.

    Nothing happens when tracking is off, or when the run never reached evaluation (no model, no
    report: its ERROR line says why, and there is nothing to compare).

    Raises:
        TrackingError: only if `required` and the model was persisted; otherwise a failure is one WARNING.
    """
    config = tracking_config(run.bucket)
    if config is None or run.model is None:
        return
    model = run.model
    what = (f"the run of model {model.artefact_id}" + (
        ", its model version and the alias" if run.artefact_key else " (refused)"))
    try:
        run_id, version = within_budget(lambda: _track(config, run, model), TRACKING.budget_seconds, what, config)
    except TrackingError as error:
        if required and run.artefact_key is not None:
            raise
        log.warning(f"experiment tracking: {error}")
        return
    log.info(f"experiment tracking: run {run_id} in experiment {config.experiment!r} at {config.server}"
             + (f"; model version {version} of {config.model_name!r}" if version else ""))


def _track(config: TrackingConfig, run: TrainingRun, model: Model) -> Tuple[str, Optional[str]]:
    client = mlflow_client(config)
    artefact_uri = f"s3://{run.bucket}/{run.artefact_key}" if run.artefact_key else None
    report = json.loads(run.report_files[REPORT_JSON]) if REPORT_JSON in run.report_files else {}
    facts = run_facts(model.lineage(), report, run.params, run.metrics, run.failures, artefact_uri)
    run_id = log_run(client, config, facts, run.report_files, FAILED if run.failures else FINISHED,
                     f"{model.artefact_id} on {model.dataset.key}")
    if artefact_uri is None:
        return run_id, None
    version = register_version(client, config, artefact_uri, run_id)
    sync_live_alias(client, config, run.bucket)
    return run_id, str(version.version)


def track_status_change(bucket: str, artefact_key: str, action: str, reason: str) -> None:
    """After the registry CLI rejected or restored a model: tag its version, move the alias.
    A failure is one WARNING: the change is recorded in S3, which is what counts."""
    config = tracking_config(bucket)
    if config is None:
        return
    artefact_uri = f"s3://{bucket}/{artefact_key}"

    def work() -> Optional[str]:
        client = mlflow_client(config)
        tag_status(client, config, artefact_uri, REJECTED if action == REJECT else "restored", reason)
        return sync_live_alias(client, config, bucket)

    try:
        version = within_budget(work, TRACKING.budget_seconds,
                                f"the {action} of {artefact_uri} and the alias it moves", config)
    except TrackingError as error:
        log.warning(f"experiment tracking: {error}")
        return
    log.info(f"experiment tracking: {action} of {artefact_uri} tagged; alias {LIVE!r} now on version {version}")
