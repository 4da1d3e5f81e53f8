"""Train stage: newest dataset in, validated and versioned model out.

Usage: python -m pipeline.train_model S3_BUCKET R2_ERROR_THRESHOLD R2_WARNING_THRESHOLD
       [--n-jobs N] [--champion-tolerance T]

Bodywork runs it as `python train_model.py ARGS` from `pipeline/` with the repository root on
PYTHONPATH. Exit code 0: a model was persisted, signed with the key in MODEL_SIGNING_KEY.
Exit code 1: nothing was persisted, and one ERROR line says why (bad arguments, no signing
key, S3, bad data, or every gate the model failed); the live model is still the one before.
The steps live in `pipeline/train/`, run in order by `stage.train` (docs/train-stage.md).
"""
import logging
import sys

from pipeline.storage.client import StorageError
from pipeline.train.champion import ModelRefusedError
from pipeline.train.stage import USAGE, parse_args, train
from pipeline.train.steps import DatasetError
from pipeline.utils import configure_logger

log = logging.getLogger(__name__)

if __name__ == "__main__":
    configure_logger()
    try:
        arguments = parse_args(sys.argv[1:])
    except ValueError as error:
        log.error(f"Invalid arguments passed to train_model.py: {error}; {USAGE}")
        sys.exit(1)
    try:
        train(
            arguments.bucket, arguments.error_threshold, arguments.warning_threshold,
            n_jobs=arguments.n_jobs, champion_tolerance=arguments.champion_tolerance,
        )
    except (StorageError, DatasetError, ModelRefusedError, ValueError) as error:
        log.error(f"train_model failed: {error}")
        sys.exit(1)
    except Exception as error:  # the one ERROR line must also cover the unforeseen
        log.error(f"train_model failed unexpectedly: {error!r}")
        sys.exit(1)
