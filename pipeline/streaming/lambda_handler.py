"""The AWS Lambda handler: `handler(event, context)` for a Kinesis event source mapping with
`FunctionResponseTypes: ["ReportBatchItemFailures"]` (docs/streaming.md says how to wire it).

    pipeline.streaming.lambda_handler.handler

The first invocation of a container loads the live model (the serve stage's `load_model`: the
newest model not rejected, its signature verified with MODEL_SIGNING_KEY, its scikit-learn
version checked) from the bucket named by TIME_TO_DISPATCH_BUCKET, and makes the Kinesis and
S3 clients; later invocations of the same container reuse them. Nothing is loaded at import.

Each invocation runs the batch through the streaming core as a whole (`process_batch`: one
vectorised estimate, dead letters written, one PutRecords per 500 predictions), then answers
which records were not processed, in the shape Lambda's Kinesis integration reads:

    {"batchItemFailures": [{"itemIdentifier": "<sequence number>"}, ...]}

- every record whose prediction could not be written after the retries (Lambda checkpoints
  before the lowest and sends the batch again from there, so nothing after it is skipped);
- every record of the batch when its dead letters could not be written;
- none for a record that could not be scored: it is in the dead letters, and retrying it
  would fail the same way for ever.

Powertools for AWS Lambda does the event's parsing (`KinesisStreamEvent`: each record's
base64 data, sequence number, partition key and eventID) and the answer (`BatchProcessor`,
`process_partial_response`: the response's shape, each record's identifier, nothing carried
over from one invocation to the next). Its per-record handler cannot do the work itself, since
predictions are put 500 to a call, so the batch is processed first and the per-record handler
only says whether that record's outcome was written.
"""
import logging
from typing import Any, Dict, NamedTuple, Optional, Set

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes import KinesisStreamEvent
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord

from pipeline.artefact.model import Model
from pipeline.serve.model_loading import load_model
from pipeline.settings import STREAM, environment_value
from pipeline.storage.client import StorageError, s3_client
from pipeline.streaming.core import process_batch
from pipeline.streaming.events import StreamRecord
from pipeline.streaming.output import DeadLetterStore, kinesis_client
from pipeline.utils import LOG_FORMAT, configure_logger, quiet_libraries

log = logging.getLogger(__name__)


class LambdaConfigurationError(Exception):
    """The function's environment does not say what it needs (a bucket, an output stream)."""


class NotWrittenError(Exception):
    """A record's outcome (its prediction, or its batch's dead letters) was not written."""


class Loaded(NamedTuple):
    """What a container loads once, on its first invocation."""

    model: Model
    kinesis: Any
    output_stream: str
    dead_letters: DeadLetterStore


_loaded: Optional[Loaded] = None


def handler(event: Dict[str, Any], context: Any) -> Dict[str, Any]:
    """Score a Kinesis batch and put the predictions on the output stream.

    Args:
        event: the Kinesis event as Lambda sends it (`Records[].kinesis.data` base64, ...).
        context: Lambda's context object.

    Returns:
        {"batchItemFailures": [{"itemIdentifier": sequence number}, ...]}: the records not
        processed, in stream order; an empty list when the whole batch was.

    Raises:
        LambdaConfigurationError: TIME_TO_DISPATCH_BUCKET or TIME_TO_DISPATCH_OUTPUT_STREAM is unset.
        SigningKeyError, StorageError, ModelCompatibilityError: no live model could be loaded
            (as the serve stage's `load_model`).
        StreamError: the output stream does not exist or refuses access.
    """
    loaded = load()
    records = [stream_record(record) for record in KinesisStreamEvent(event).records]
    not_written = unwritten_sequence_numbers(records, loaded)

    def outcome_written(record: KinesisStreamRecord) -> None:
        if record.kinesis.sequence_number in not_written:
            raise NotWrittenError(record.kinesis.sequence_number)

    # A fresh processor each time: an invocation never reports another's records.
    processor = BatchProcessor(event_type=EventType.KinesisDataStreams, raise_on_entire_batch_failure=False)
    return dict(process_partial_response(event=event, record_handler=outcome_written, processor=processor,
                                         context=context))


def unwritten_sequence_numbers(records: Any, loaded: Loaded) -> Set[str]:
    """Run the batch through the core; the sequence numbers of the records not processed."""
    try:
        result = process_batch(records, loaded.model, loaded.kinesis, loaded.output_stream, loaded.dead_letters)
    except StorageError as error:
        log.error(f"the batch's dead letters could not be written, so none of its {len(records)} record(s) is "
                  f"acknowledged (it is sent again): {error}")
        return {record.sequence_number for record in records}
    log.info(f"batch of {len(records)} record(s): {result.written} prediction(s) written, {result.dead_lettered} "
             f"dead-lettered, {len(result.unwritten)} not written")
    return {record.sequence_number for record in result.unwritten}


def stream_record(record: KinesisStreamRecord) -> StreamRecord:
    """A Lambda event's record as the core's: the shard is the eventID's part before its ':'."""
    return StreamRecord(
        shard_id=record.event_id.split(":", 1)[0],
        sequence_number=record.kinesis.sequence_number,
        data=record.kinesis.data_as_bytes(),
        partition_key=record.kinesis.partition_key,
    )


def load() -> Loaded:
    """The container's model and clients, loaded on its first invocation and kept.

    Raises:
        as `handler`; nothing is kept after a failure, so the next invocation tries again.
    """
    global _loaded
    if _loaded is None:
        _configure_logging()
        bucket = _required(STREAM.lambda_bucket_variable, "the bucket whose live model it serves")
        output_stream = _required(STREAM.lambda_output_stream_variable, "the stream it writes predictions to")
        try:
            model = load_model(bucket)
        except Exception as error:
            log.error(f"the Lambda handler cannot load a model from bucket {bucket}: {error}")
            raise
        s3 = s3_client()
        _loaded = Loaded(model, kinesis_client(), output_stream, DeadLetterStore(bucket, s3, STREAM.lambda_source))
        log.info(f"serving model {model} to stream {output_stream}")
    return _loaded


def _required(variable: str, what: str) -> str:
    value = environment_value(variable)
    if not value:
        message = f"the environment variable {variable} is not set: it names {what}"
        log.error(message)
        raise LambdaConfigurationError(message)
    return value


def _configure_logging() -> None:
    # Lambda's runtime installs a handler on the root logger that writes to CloudWatch: the
    # project's format goes on it, rather than a second handler printing every line twice.
    root = logging.getLogger()
    if not root.handlers:
        configure_logger()
        return
    for existing in root.handlers:
        existing.setFormatter(logging.Formatter(LOG_FORMAT))
    root.setLevel(logging.INFO)
    quiet_libraries()
