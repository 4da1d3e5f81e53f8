"""Train stage: newest dataset in, validated and versioned model out.

Usage: python -m pipeline.train_model S3_BUCKET R2_ERROR_THRESHOLD R2_WARNING_THRESHOLD
       [--n-jobs N]

Bodywork runs it as `python train_model.py ARGS` from `pipeline/` with the repository root on
PYTHONPATH. Exit code 0: a model was persisted, signed with the key in MODEL_SIGNING_KEY.
Exit code 1: nothing was persisted, and one ERROR line says why (bad arguments, no signing
key, S3, bad data, failed logic checks, r² below the error threshold). The newest model in
the bucket is then still the one that was there before.

The steps live in `training.py` (data, evaluation, checks, lineage) and `tuning.py` (the grid
search); this module only wires them together and maps failures to the exit code.
"""
import argparse
import logging
import math
import sys
from typing import Any, Dict, List, Optional, Sequence

from pipeline.model import Model
from pipeline.signing import load_signing_keys
from pipeline.storage import StorageError, get_latest_dataset, put_model
from pipeline.training import (
    DatasetError,
    ModelValidationError,
    build_model,
    check_model_logic,
    check_r_squared,
    check_thresholds_valid,
    evaluate,
    prepare_data,
)
from pipeline.tuning import HYPERPARAM_GRID, tune_hyperparameters
from pipeline.utils import StageArgumentParser, configure_logger

USAGE = (
    "usage: python -m pipeline.train_model S3_BUCKET R2_ERROR_THRESHOLD R2_WARNING_THRESHOLD "
    "[--n-jobs N] (thresholds are numbers in (0, 1])"
)

log = logging.getLogger(__name__)


def main(
    bucket: str,
    error_threshold: float,
    warning_threshold: float,
    hyperparam_grid: Optional[Dict[str, List[Any]]] = None,
    n_jobs: Optional[int] = None,
) -> Model:
    """Train on the newest dataset in the bucket and persist the model if it is good enough.

    Raises:
        SigningKeyError: MODEL_SIGNING_KEY is unset or malformed (checked before any work).
        StorageError: S3 failed or holds no usable dataset.
        DatasetError: the dataset cannot be trained on.
        ModelValidationError: logic checks failed or r² is below the error threshold.
    """
    check_thresholds_valid(error_threshold, warning_threshold)
    keys = load_signing_keys()
    dataset = get_latest_dataset(bucket)
    log.info(f"training on {dataset.uri} (ETag {dataset.etag}, version {dataset.version_id})")
    data = prepare_data(dataset.data)
    grid = hyperparam_grid or HYPERPARAM_GRID
    search = tune_hyperparameters(data.X_train, data.y_train, grid, n_jobs)
    metrics = evaluate(search.estimator, data)
    check_model_logic(search.estimator, data)
    check_r_squared(metrics, error_threshold, warning_threshold)
    model = build_model(search.estimator, search.best_params, data, metrics, dataset)
    key = put_model(bucket, model, keys=keys)
    log.info(f"persisted model {model} to s3://{bucket}/{key}")
    return model


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the CLI arguments.

    Raises:
        ValueError: with the reason, for any bad argument.
    """
    parser = StageArgumentParser(prog="train_model.py")
    parser.add_argument("error_threshold", type=float)
    parser.add_argument("warning_threshold", type=float)
    parser.add_argument("--n-jobs", type=int, default=None)
    args = parser.parse_stage_args(argv)
    for name in ("error_threshold", "warning_threshold"):
        value = getattr(args, name)
        if not (math.isfinite(value) and 0 < value <= 1):
            raise ValueError(f"R2_{name.split('_')[0].upper()}_THRESHOLD must be in (0, 1], got {value}")
    return args


if __name__ == "__main__":
    configure_logger()
    try:
        arguments = parse_args(sys.argv[1:])
    except ValueError as error:
        log.error(f"Invalid arguments passed to train_model.py: {error}; {USAGE}")
        sys.exit(1)
    try:
        main(
            arguments.bucket, arguments.error_threshold, arguments.warning_threshold,
            n_jobs=arguments.n_jobs,
        )
    except (StorageError, DatasetError, ModelValidationError, ValueError) as error:
        log.error(f"train_model failed: {error}")
        sys.exit(1)
    except Exception as error:  # the one ERROR line must also cover the unforeseen
        log.error(f"train_model failed unexpectedly: {error!r}")
        sys.exit(1)
