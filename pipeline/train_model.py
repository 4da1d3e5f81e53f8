"""Train stage: newest dataset in, validated and versioned model out.

Usage: python -m pipeline.train_model S3_BUCKET R2_ERROR_THRESHOLD R2_WARNING_THRESHOLD
       [--n-jobs N] [--champion-tolerance T] [--upper-coverage C] [--no-calibration]
       [--tracking-required]

Bodywork runs it as `python train_model.py ARGS` from `pipeline/` with the repository root on
PYTHONPATH. Exit code 0: a model was persisted, signed with the key in MODEL_SIGNING_KEY.
Exit code 1: nothing was persisted, and one ERROR line says why (bad arguments, no signing
key, S3, bad data, or every gate the model failed); the live model is still the one before.
With --tracking-required, also when MLflow tracking failed (MLFLOW_TRACKING_URI set): before
training, or after the model was persisted (then the model is persisted and live).
The steps live in `pipeline/train/`, run in order by `stage.train` (docs/train-stage.md).
"""
import sys

from pipeline.cli import CommandLine, Failures
from pipeline.storage.client import StorageError
from pipeline.tracking.mlflow_client import TrackingError
from pipeline.train.champion import ModelRefusedError
from pipeline.train.stage import USAGE, parse_args, train
from pipeline.train.steps import DatasetError

CLI = CommandLine(
    "train_model", parse_args,
    lambda arguments: train(
        arguments.bucket, arguments.error_threshold, arguments.warning_threshold,
        n_jobs=arguments.n_jobs, champion_tolerance=arguments.champion_tolerance,
        calibrate=arguments.calibrate, upper_coverage=arguments.upper_coverage,
        tracking_required=arguments.tracking_required,
    ),
    usage=USAGE, failures=[Failures((StorageError, DatasetError, ModelRefusedError, ValueError, TrackingError))],
)

if __name__ == "__main__":
    sys.exit(CLI.main(sys.argv[1:]))
