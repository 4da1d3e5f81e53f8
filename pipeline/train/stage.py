"""The train stage in order: newest dataset in, validated and versioned model out.

`train` reads as the whole story: newest dataset, prepare, tune, evaluate, compare with the
live model, drift, report, then every gate together, and persist, signed. Every run that
reaches evaluation writes its report under `reports/` before the gates are applied; a model
that fails a gate is never persisted. `parse_args` reads the stage's command line;
`pipeline/train_model.py` wires the two and maps failures to the exit code.
"""
import argparse
import logging
import math
from typing import Any, Dict, List, Optional, Sequence

from sklearn.tree import DecisionTreeRegressor

from pipeline.artefact.calibration import ServedEstimator
from pipeline.artefact.model import Model
from pipeline.artefact.signing import SigningKeys, load_signing_keys
from pipeline.settings import S3, TRAIN
from pipeline.storage.client import end_s3_deadline, start_s3_deadline
from pipeline.storage.datasets import Dataset, get_latest_dataset
from pipeline.storage.layout import report_prefix
from pipeline.storage.report_files import put_report, report_digest
from pipeline.storage.signed_artefacts import put_model
from pipeline.tracking.stage_hooks import TrainingRun, check_tracking, track_training
from pipeline.train.champion import (
    ModelRefusedError,
    apply_decision,
    check_tolerance_valid,
    compare_with_champion,
    decide,
    load_champion,
)
from pipeline.train.calibrate import fit_calibration, fit_upper_bound, trained_ranges
from pipeline.train.drift import compute_drift, log_findings
from pipeline.train.report import REPORT_HTML, RunFindings, build_report
from pipeline.train.steps import (
    build_model,
    check_thresholds_valid,
    evaluate,
    PreparedData,
    logic_check_failures,
    logic_check_headroom,
    prepare_data,
    r_squared_failure,
    test_rows,
)
from pipeline.train.tuning import HYPERPARAM_GRID, tune_hyperparameters
from pipeline.utils import StageArgumentParser

USAGE = (
    "usage: python -m pipeline.train_model S3_BUCKET R2_ERROR_THRESHOLD R2_WARNING_THRESHOLD "
    "[--n-jobs N] [--champion-tolerance T] [--upper-coverage C] [--no-calibration] [--tracking-required] "
    "(thresholds are numbers in (0, 1]; T a number >= 0, "
    f"default {TRAIN.default_champion_tolerance}: how much worse than the live model's MAE, relatively; "
    f"C in (0, 1), default {TRAIN.default_upper_coverage}: the upper bound's coverage)"
)

log = logging.getLogger(__name__)


def train(
    bucket: str,
    error_threshold: float,
    warning_threshold: float,
    hyperparam_grid: Optional[Dict[str, List[Any]]] = None,
    n_jobs: Optional[int] = None,
    champion_tolerance: float = TRAIN.default_champion_tolerance,
    calibrate: bool = TRAIN.calibrate,
    upper_coverage: float = TRAIN.default_upper_coverage,
    tracking_required: bool = False,
) -> Model:
    """Train on the newest dataset, judge the model, report, and persist it if every gate passes.

    The served estimate is the tree's isotonic calibration (`calibrate`, on by default) or the
    tree's own; every gate judges the served estimate, and the upper bound is fitted for
    `upper_coverage` on its held-out residuals.

    With MLFLOW_TRACKING_URI set, the run (refused ones too) is then logged to MLflow and a
    persisted model registered (`tracking.stage_hooks.track_training`), after the S3 deadline.

    Raises:
        SigningKeyError: MODEL_SIGNING_KEY is unset or malformed (checked before any work).
        StorageError: S3 failed or holds no usable dataset; S3DeadlineError: the stage's S3
            work was not done by S3.train_deadline_seconds after it started.
        DatasetError: the dataset cannot be trained on.
        InvalidModelError: the model fails the serve stage's structure check (nothing is persisted).
        ModelRefusedError: one or more gates failed (all are named); the report is written.
        TrackingError: with `tracking_required` only: the tracking server failed before training,
            or after the model was persisted.
    """
    check_thresholds_valid(error_threshold, warning_threshold)
    check_tolerance_valid(champion_tolerance)
    check_coverage_valid(upper_coverage)
    keys = load_signing_keys()
    if tracking_required:
        check_tracking(bucket)
    grid = hyperparam_grid or HYPERPARAM_GRID
    run = TrainingRun(bucket, params={"grid_size": math.prod(len(values) for values in grid.values()),
                                      "n_jobs": n_jobs})
    start_s3_deadline("the train stage", S3.train_deadline_seconds)
    try:
        model = _train(bucket, error_threshold, warning_threshold, keys, grid, n_jobs, champion_tolerance,
                       calibrate, upper_coverage, run)
    except ModelRefusedError:
        end_s3_deadline()
        track_training(run)
        raise
    finally:
        end_s3_deadline()
    track_training(run, tracking_required)
    return model


def _train(
    bucket: str,
    error_threshold: float,
    warning_threshold: float,
    keys: SigningKeys,
    hyperparam_grid: Dict[str, List[Any]],
    n_jobs: Optional[int],
    champion_tolerance: float,
    calibrate: bool,
    upper_coverage: float,
    run: TrainingRun,
) -> Model:
    """`train`'s steps, inside the stage's S3 deadline; `run` gathers what tracking logs."""
    dataset = get_latest_dataset(bucket)
    log.info(f"training on {dataset.uri} (ETag {dataset.etag}, version {dataset.version_id})")
    data = prepare_data(dataset.data)
    search = tune_hyperparameters(data.X_train, data.y_train, hyperparam_grid, n_jobs)
    model = build_served_model(search.estimator, search.best_params, data, dataset, calibrate, upper_coverage)
    metrics = model.metrics
    champion, reference = load_champion(bucket)
    orders, codes = test_rows(data)
    comparison = compare_with_champion(model, champion, orders, codes, data.y_test, champion_tolerance) \
        if champion is not None else None
    drift = compute_drift(dataset.data, reference.data if reference else None,
                          reference.uri if reference else None, champion)
    log_findings(drift)
    logic_failures = logic_check_failures(model.served_estimator, data)
    decision = decide(logic_failures, r_squared_failure(metrics, error_threshold, warning_threshold), comparison)
    findings = RunFindings(
        model, champion, dataset.data, reference.data if reference else None, orders, codes, data.y_test,
        comparison, drift, logic_failures, (error_threshold, warning_threshold), champion_tolerance, decision,
    )
    prefix = report_prefix(model)
    report = build_report(findings)
    put_report(bucket, prefix, report)
    run.model, run.report_files, run.failures = model, report, decision.failures
    run.metrics.update(logic_check_headroom(model.served_estimator, data))
    log.info(f"model report written to s3://{bucket}/{prefix}{REPORT_HTML}")
    apply_decision(decision, f"s3://{bucket}/{prefix}{REPORT_HTML}")
    model.report_key = prefix + REPORT_HTML
    model.report_sha256 = report_digest(report[REPORT_HTML])
    key = put_model(bucket, model, keys=keys)
    run.artefact_key = key
    log.info(f"persisted model {model} to s3://{bucket}/{key}")
    return model


def build_served_model(
    estimator: DecisionTreeRegressor,
    hyperparameters: Dict[str, Any],
    data: PreparedData,
    dataset: Dataset,
    calibrate: bool = TRAIN.calibrate,
    upper_coverage: float = TRAIN.default_upper_coverage,
) -> Model:
    """The tuned tree with what is served over it: the calibration (if `calibrate`), the upper
    bound from the served estimate's held-out residuals, the trained ranges, and both the served
    estimate's metrics (the model's `metrics`, which the gates judge) and the tree's own."""
    tree_metrics = evaluate(estimator, data, "the tree's test metrics")
    calibration = fit_calibration(estimator, data) if calibrate else None
    if calibration is None:
        log.info("calibration is off: the tree's estimate is served")
    served = ServedEstimator(estimator, calibration, data.encoding.codes)
    metrics = evaluate(served, data, "the served estimate's test metrics") if calibrate else tree_metrics
    upper_bound = fit_upper_bound(data.y_test - served.predict(data.X_test), upper_coverage)
    return build_model(estimator, hyperparameters, data, metrics, dataset, calibration=calibration,
                       upper_bound=upper_bound, ranges=trained_ranges(data), tree_metrics=tree_metrics)


def check_coverage_valid(coverage: float) -> None:
    """Raises ValueError unless the upper bound's coverage is a number in (0, 1)."""
    if not (isinstance(coverage, (int, float)) and math.isfinite(coverage) and 0 < coverage < 1):
        raise ValueError(f"the upper bound's coverage must be a number in (0, 1), got {coverage!r}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the CLI arguments.

    Raises:
        ValueError: with the reason, for any bad argument.
    """
    parser = StageArgumentParser(prog="train_model.py")
    parser.add_argument("error_threshold", type=float)
    parser.add_argument("warning_threshold", type=float)
    parser.add_argument("--n-jobs", type=int, default=None)
    parser.add_argument("--champion-tolerance", type=float, default=TRAIN.default_champion_tolerance)
    parser.add_argument("--upper-coverage", type=float, default=TRAIN.default_upper_coverage)
    parser.add_argument("--no-calibration", dest="calibrate", action="store_false", default=TRAIN.calibrate)
    parser.add_argument("--tracking-required", action="store_true")
    args = parser.parse_stage_args(argv)
    for name in ("error_threshold", "warning_threshold"):
        value = getattr(args, name)
        if not (math.isfinite(value) and 0 < value <= 1):
            raise ValueError(f"R2_{name.split('_')[0].upper()}_THRESHOLD must be in (0, 1], got {value}")
    check_tolerance_valid(args.champion_tolerance)
    check_coverage_valid(args.upper_coverage)
    return args
