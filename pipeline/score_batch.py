"""Batch scoring: a file of orders from S3 to S3, or every past week with the model live then.

Usage: python -m pipeline.score_batch BUCKET INPUT_KEY OUTPUT_KEY [--model MODEL]
       [--max-reject-fraction F]
       python -m pipeline.score_batch BUCKET --backfill [--since DATE] [--until DATE]
       [--max-reject-fraction F]

The first form writes OUTPUT_KEY (the input's rows, `est_hours_to_dispatch` added) and
OUTPUT_KEY + `.rejects.csv`, with the live model or the one MODEL names; the second scores each
weekly dataset with the model live when it was dropped, into `predictions/`. Exit code 0:
done; 1: one ERROR line says why, and a failed file leaves no output object; 143: SIGTERM
stopped it, the uploads were aborted, one ERROR line says so. The steps live
in `pipeline/batch/`, run in order by `jobs.py` (docs/batch-scoring.md).
"""
import argparse
import sys

from pipeline.batch.backfill import BackfillError
from pipeline.batch.jobs import (
    STOP_EXIT_CODE,
    USAGE,
    StopRequested,
    backfill_weeks,
    parse_args,
    score_file,
    stop_on_sigterm,
)
from pipeline.batch.scoring import ScoringError
from pipeline.cli import CommandLine, Failures
from pipeline.storage.client import StorageError


def run(arguments: argparse.Namespace) -> None:
    """The backfill of past weeks, or the scoring of one file; SIGTERM aborts the uploads."""
    stop_on_sigterm()
    if arguments.backfill:
        backfill_weeks(arguments.bucket, arguments.since, arguments.until, arguments.max_reject_fraction)
    else:
        score_file(arguments.bucket, arguments.input_key, arguments.output_key, arguments.model,
                   arguments.max_reject_fraction)


CLI = CommandLine(
    "score_batch", parse_args, run, usage=USAGE,
    failures=[Failures((StorageError, ScoringError, BackfillError)),
              Failures((UnicodeDecodeError,), "the input is not UTF-8 text: ")],
    stops=(StopRequested,), stopped=lambda stop: f"score_batch {stop}", stop_exit_code=STOP_EXIT_CODE,
)

if __name__ == "__main__":
    sys.exit(CLI.main(sys.argv[1:]))
