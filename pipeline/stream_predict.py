"""Stream stage: order events from a Kinesis stream, predictions to another, losing nothing.

Usage: python -m pipeline.stream_predict S3_BUCKET --input-stream NAME --output-stream NAME
       [--consumer-name NAME] [--start-position {TRIM_HORIZON,LATEST}] [--batch-size N]
       [--host HOST] [--port PORT]

It opens its port (`/metrics`, `/health`; `/ready` answers 503 until the shards are read),
loads the live model (verified as the serve stage loads it), and reads every shard of the
input stream, checkpointing each shard in S3 after each batch's predictions and dead letters
are written. SIGTERM finishes the batch in flight, checkpoints it and exits 0 (before the
shards are read, it exits 0 at once). Any failure is
one ERROR line and exit code 1; a restart resumes from the checkpoints. The steps live in
`pipeline/streaming/consumer.py` (docs/streaming.md).
"""
import sys

from pipeline.artefact.signing import SigningKeyError
from pipeline.cli import CommandLine, Failures
from pipeline.serve.model_loading import ModelCompatibilityError
from pipeline.storage.client import StorageError
from pipeline.streaming.consumer import USAGE, ConsumerError, StopRequested, consume, parse_args
from pipeline.streaming.output import StreamError

CLI = CommandLine(
    "stream_predict", parse_args, consume, usage=USAGE,
    failures=[Failures((StorageError, SigningKeyError, ModelCompatibilityError, ConsumerError, StreamError,
                        OSError))],
    stops=(StopRequested,), stopped=lambda stop: f"stream_predict {stop} before it read any shard",
    done="stream_predict stopped as asked",
)

if __name__ == "__main__":
    sys.exit(CLI.main(sys.argv[1:]))
