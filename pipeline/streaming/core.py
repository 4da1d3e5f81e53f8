"""One batch of stream records, from records read to results written: the streaming core that
the Lambda handler and the consumer on Kubernetes share.

    score (events.py) -> write the dead letters -> put the predictions (output.py) -> report

The dead letters are written before the predictions, and a failure to write them raises: the
caller then acknowledges nothing of the batch, so a record that could not be scored is never
dropped unrecorded. Predictions still not written after the retries are reported, in input
order, for the caller to leave unacknowledged (Lambda retries from the first of them).
"""
import logging
from typing import Any, List, NamedTuple, Sequence

from pipeline.artefact.model import Model
from pipeline.streaming.events import StreamRecord, score_records
from pipeline.streaming.output import DeadLetterStore, put_predictions
from pipeline.utils import quote

log = logging.getLogger(__name__)


class BatchResult(NamedTuple):
    """What became of a batch: predictions written, records dead-lettered, and the records whose
    prediction could not be written after the retries, in input order."""

    written: int
    dead_lettered: int
    unwritten: List[StreamRecord]


def process_batch(
    records: Sequence[StreamRecord], model: Model, kinesis: Any, output_stream: str, dead_letters: DeadLetterStore
) -> BatchResult:
    """Score a batch, write its dead letters, put its predictions on the output stream.

    Args:
        records: the batch, in stream order.
        model: the live model.
        kinesis: a boto3 Kinesis client (`output.kinesis_client`).
        output_stream: the predictions' stream.
        dead_letters: where the records that cannot be scored go.

    Returns:
        The BatchResult.

    Raises:
        StorageError: the dead letters could not be written (nothing of the batch may be
            acknowledged).
        StreamError: the output stream does not exist or refuses access.
    """
    scored, dead = score_records(records, model)
    key = dead_letters.write(dead)
    if key is not None:
        log.warning(f"{len(dead)} of {len(records)} record(s) could not be scored, written to "
                    f"s3://{dead_letters.bucket}/{key}; the first: {quote(dead[0].reason)}")
    unwritten = put_predictions(kinesis, output_stream, scored)
    if unwritten:
        log.warning(f"{len(unwritten)} prediction(s) could not be written to stream {quote(output_stream)}; the "
                    f"first is of record {unwritten[0].record.sequence_number} of {unwritten[0].record.shard_id}")
    return BatchResult(len(scored) - len(unwritten), len(dead), [event.record for event in unwritten])
