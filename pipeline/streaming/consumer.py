"""The stream consumer on Kubernetes: every shard of the input stream, a batch at a time, through
the streaming core, checkpointed in S3 only once the batch's output is written.

`consume` runs the stage in order: open the HTTP port (`/ready` answers 503), load the live
model once (verified as the serve stage loads it), list the shards, read the checkpoints, then
read every shard until SIGTERM or SIGINT, when the batch in flight is finished and checkpointed
and the function returns. `parse_args` reads the stage's command line;
`pipeline/stream_predict.py` wires the two and maps failures to the exit code.

Delivery is at least once. A shard is resumed after its checkpoint's sequence number, or,
without a checkpoint, at the start position (TRIM_HORIZON by default: nothing is lost). A
batch's checkpoint is written after its predictions and dead letters are, so a crash between
the two processes that batch again: at most STREAM.get_records_limit duplicates per shard. A
batch whose predictions were not all written (the output stream throttled past the core's
retries) is checkpointed up to the record before the first one not written, and read again
from there after a backoff.

After a reshard a closed parent shard is read to its end (GetRecords answers no next iterator;
or, as moto's server behaves, the listing gives the shard an ending sequence number that the
consumer has reached) before its children are read: the order of a partition key's records
is kept. One thread does the reading; the HTTP port is served by another
(`consumer_metrics.StatusServer`).
"""
import logging
import os
import re
import signal
import threading
import time
from types import FrameType
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.artefact.model import Model
from pipeline.serve.model_loading import load_model
from pipeline.settings import S3, SERVE, STREAM
from pipeline.storage.client import end_s3_deadline, s3_client, start_s3_deadline
from pipeline.streaming.checkpoints import Checkpoint, CheckpointStore
from pipeline.streaming.consumer_metrics import ConsumerMetrics, ConsumerStatus, StatusServer
from pipeline.streaming.core import process_batch
from pipeline.streaming.events import StreamRecord
from pipeline.streaming.output import DeadLetterStore, kinesis_client
from pipeline.utils import StageArgumentParser, quote

USAGE = (
    "usage: python -m pipeline.stream_predict S3_BUCKET --input-stream NAME --output-stream NAME "
    "[--consumer-name NAME] [--start-position {TRIM_HORIZON,LATEST}] [--batch-size N] [--host HOST] [--port PORT]"
)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_NAME = re.compile(STREAM.consumer_name_pattern)
# Kinesis' answers that end the consumer: the stream is not there, or may not be read.
_PERMANENT_CODES = ("ResourceNotFoundException", "AccessDeniedException", "UnrecognizedClientException",
                    "InvalidSignatureException", "KMSAccessDeniedException", "KMSNotFoundException")
_THROTTLED_CODES = ("ProvisionedThroughputExceededException", "LimitExceededException", "ThrottlingException")
# An iterator that Kinesis no longer takes: acquired again from the checkpoint.
_ITERATOR_CODES = ("ExpiredIteratorException", "InvalidArgumentException")

log = logging.getLogger(__name__)


class ConsumerError(Exception):
    """Kinesis refused the consumer, or failed for longer than it waits."""


class StopRequested(BaseException):
    """SIGTERM or SIGINT arrived before the consumer read any shard: it stops at once (a
    BaseException, as the serve stage's, so that no `except Exception` on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class ConsumerOptions(NamedTuple):
    """What the command line asked for."""

    bucket: str
    input_stream: str
    output_stream: str
    consumer_name: str = STREAM.consumer_default_name
    start_position: str = STREAM.start_positions[0]
    batch_size: int = STREAM.get_records_limit
    host: str = SERVE.default_host
    port: int = STREAM.consumer_default_port


class ShardState:
    """One shard as the consumer reads it."""

    def __init__(self, shard_id: str, parents: Sequence[str], ending_sequence: Optional[str],
                 checkpoint: Optional[Checkpoint]) -> None:
        self.shard_id = shard_id
        self.parents = tuple(parents)
        self.ending_sequence = ending_sequence
        self.last_sequence = checkpoint.sequence_number if checkpoint else None
        self.finished = checkpoint.finished if checkpoint else False
        # The first record of a batch whose prediction was not written: read again from it.
        self.resume_at: Optional[str] = None
        self.iterator: Optional[str] = None
        self.next_read_at = 0.0
        self.backoff = 0.0
        self.failing_since: Optional[float] = None


def consume(options: ConsumerOptions, stop: Optional[threading.Event] = None) -> None:
    """Run the consumer until SIGTERM or SIGINT (or `stop` is set).

    Raises:
        SigningKeyError, StorageError, ModelCompatibilityError: as `serve.model_loading.load_model`
            (no live model, or one that does not verify); StorageError also when a checkpoint
            or dead letter cannot be read or written.
        ConsumerError: the input stream is missing or may not be read, or Kinesis failed for
            longer than STREAM.give_up_seconds.
        StreamError: the output stream is missing or may not be written (the core's).
        OSError: the port cannot be opened.
        StopRequested: SIGTERM or SIGINT arrived before the shards were read (nothing to finish).
    """
    stop = stop or threading.Event()
    reading = threading.Event()
    stop_on_signals(stop, reading)
    metrics, status = ConsumerMetrics(), ConsumerStatus()
    server = StatusServer(options.host, options.port, metrics, status).start()
    try:
        model = load_live_model(options.bucket)
        metrics.observe_model(model)
        s3 = s3_client()
        consumer = Consumer(
            options, model, kinesis_client(), CheckpointStore(options.bucket, s3, options.consumer_name,
                                                              options.input_stream),
            DeadLetterStore(options.bucket, s3, options.consumer_name), metrics)
        consumer.start()
        status.set_ready()
        reading.set()
        consumer.run(stop)
    finally:
        server.stop()


def load_live_model(bucket: str) -> Model:
    """The live model, verified, loaded within the serve stage's S3 deadline (see `load_model`)."""
    start_s3_deadline("the stream consumer", S3.serve_deadline_seconds)
    try:
        model = load_model(bucket)
    finally:
        end_s3_deadline()
    log.info(f"predicting with model {model}")
    return model


class Consumer:
    """Reads every shard of one stream and passes each batch to the core, checkpointing after it."""

    def __init__(self, options: ConsumerOptions, model: Model, kinesis: Any, checkpoints: CheckpointStore,
                 dead_letters: DeadLetterStore, metrics: ConsumerMetrics, clock: Any = time.monotonic) -> None:
        self.options = options
        self.model = model
        self.kinesis = kinesis
        self.checkpoints = checkpoints
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.clock = clock
        self.shards: Dict[str, ShardState] = {}
        self.saved: Dict[str, Checkpoint] = {}
        self.next_refresh = 0.0
        self.started = False
        self.totals = {"read": 0, "written": 0, "dead_lettered": 0}

    # --- shards ---------------------------------------------------------------------------

    def start(self) -> None:
        """List the shards and read the checkpoints.

        Raises:
            ConsumerError: the input stream is missing or may not be read.
            StorageError: a checkpoint cannot be read.
        """
        self.saved = self.checkpoints.load_all()
        self.refresh_shards()
        self.started = True
        stream = self.options.input_stream
        for state in self.shards.values():
            where = ("finished" if state.finished else f"after sequence number {state.last_sequence}"
                     if state.last_sequence else f"from {self.start_position(state)} (no checkpoint)")
            log.info(f"shard {state.shard_id} of stream {stream}: {where}")

    def refresh_shards(self) -> None:
        """List the stream's shards; add the new ones, note which are closed.

        Raises:
            ConsumerError: the input stream is missing or may not be read.
        """
        listed = self.list_shards()
        for shard in listed:
            shard_id = shard["ShardId"]
            parents = [shard[k] for k in ("ParentShardId", "AdjacentParentShardId") if shard.get(k)]
            ending = shard.get("SequenceNumberRange", {}).get("EndingSequenceNumber")
            state = self.shards.get(shard_id)
            if state is None:
                state = self.shards[shard_id] = ShardState(shard_id, parents, ending, self.saved.get(shard_id))
                self.metrics.observe_shard(shard_id)
                if state.finished:
                    self.metrics.finished.labels(shard_id).set(1)
                if self.started:
                    log.info(f"new shard {shard_id} of stream {self.options.input_stream} (parents: "
                             f"{', '.join(parents) or 'none'}): read once its parents are read to their end")
            else:
                state.ending_sequence = ending
        self.next_refresh = self.clock() + STREAM.shard_refresh_seconds

    def list_shards(self) -> List[Dict[str, Any]]:
        """Every shard of the input stream, all pages.

        Raises:
            ConsumerError: the stream is missing or may not be read, or Kinesis failed.
        """
        shards: List[Dict[str, Any]] = []
        arguments: Dict[str, Any] = {"StreamName": self.options.input_stream}
        try:
            while True:
                page = self.kinesis.list_shards(**arguments)
                shards += page.get("Shards", [])
                token = page.get("NextToken")
                if not token:
                    return shards
                arguments = {"NextToken": token}
        except ClientError as error:
            raise ConsumerError(f"cannot list the shards of the input stream {quote(self.options.input_stream)}: "
                                f"{describe(error)}") from error
        except BotoCoreError as error:
            raise ConsumerError(f"cannot list the shards of the input stream {quote(self.options.input_stream)}: "
                                f"{error}") from error

    def readable(self) -> List[ShardState]:
        """The shards to read now: not finished, and every parent still listed read to its end."""
        return [s for s in self.shards.values() if not s.finished
                and all(self.shards[p].finished for p in s.parents if p in self.shards)]

    def start_position(self, state: ShardState) -> str:
        """A shard without a checkpoint starts at the start position asked for, unless it is a
        child found after a reshard: that one is read from its beginning, whatever was asked."""
        return STREAM.start_positions[0] if state.parents and state.parents[0] in self.shards \
            else self.options.start_position

    # --- the loop -------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Read the shards in turn until `stop` is set; the batch in flight is finished first."""
        log.info(f"reading stream {self.options.input_stream} ({len(self.readable())} shard(s) to read), "
                 f"writing predictions to stream {self.options.output_stream}")
        while not stop.is_set():
            now = self.clock()
            if now >= self.next_refresh:
                self.refresh_shards()
            shards = self.readable()
            due = [s for s in shards if s.next_read_at <= now]
            for state in due:
                if stop.is_set():
                    break
                self.read_shard(state)
            if not due:
                wake = min([s.next_read_at for s in shards] + [self.next_refresh])
                stop.wait(max(0.0, min(wake - now, STREAM.idle_poll_seconds)))
        log.info(f"stopped: {self.totals['read']} record(s) read, {self.totals['written']} prediction(s) written, "
                 f"{self.totals['dead_lettered']} dead-lettered; every batch read is checkpointed")

    def read_shard(self, state: ShardState) -> None:
        """One GetRecords call on a shard, its batch processed and checkpointed.

        Raises:
            ConsumerError, StreamError, StorageError: as `consume`.
        """
        try:
            if state.iterator is None:
                state.iterator = self.shard_iterator(state)
            response = self.kinesis.get_records(ShardIterator=state.iterator, Limit=self.options.batch_size)
        except ClientError as error:
            self.read_failed(state, error)
            return
        except BotoCoreError as error:
            self.failing(state, f"{error}")
            return
        state.failing_since, state.backoff = None, 0.0
        self.metrics.behind.labels(state.shard_id).set(response.get("MillisBehindLatest", 0))
        records = [StreamRecord(state.shard_id, r["SequenceNumber"], bytes(r["Data"]), r.get("PartitionKey", ""))
                   for r in response.get("Records", [])]
        started = time.perf_counter()
        processed = self.process(state, records) if records else True
        next_iterator = response.get("NextShardIterator")
        if processed:
            state.iterator = next_iterator
        if processed and (next_iterator is None or (not records and self.read_to_ending(state))):
            state.finished = True
        if records or state.finished:
            self.checkpoints.save(Checkpoint(state.shard_id, state.last_sequence, state.finished))
        if records:
            self.metrics.batch_seconds.observe(time.perf_counter() - started)
        if state.finished:
            self.metrics.finished.labels(state.shard_id).set(1)
            log.info(f"shard {state.shard_id} is closed and read to its end; its children are read next")
            self.refresh_shards()
        elif processed:
            state.next_read_at = self.clock() + (STREAM.min_read_interval_seconds if records
                                                 else STREAM.idle_poll_seconds)

    def process(self, state: ShardState, records: List[StreamRecord]) -> bool:
        """Pass a batch to the core and move the shard's checkpoint up to the last record whose
        output is written. False when some predictions were not written: the shard is then read
        again after the last written one, after a backoff."""
        result = process_batch(records, self.model, self.kinesis, self.options.output_stream, self.dead_letters)
        shard = state.shard_id
        self.metrics.read.labels(shard).inc(len(records))
        self.metrics.written.labels(shard).inc(result.written)
        self.metrics.dead_lettered.labels(shard).inc(result.dead_lettered)
        self.totals["read"] += len(records)
        self.totals["written"] += result.written
        self.totals["dead_lettered"] += result.dead_lettered
        if not result.unwritten:
            state.last_sequence, state.resume_at = records[-1].sequence_number, None
            return True
        self.metrics.unwritten.labels(shard).inc(len(result.unwritten))
        unwritten = {record.sequence_number for record in result.unwritten}
        first = next(i for i, record in enumerate(records) if record.sequence_number in unwritten)
        if first > 0:
            state.last_sequence = records[first - 1].sequence_number
        state.resume_at = records[first].sequence_number
        state.iterator = None
        state.backoff = min(max(state.backoff * 2, STREAM.backoff_seconds), STREAM.max_backoff_seconds)
        state.next_read_at = self.clock() + state.backoff
        log.warning(f"shard {shard}: {len(result.unwritten)} of {len(records)} prediction(s) not written to stream "
                    f"{self.options.output_stream} after the retries; reading them again from sequence number "
                    f"{result.unwritten[0].sequence_number} in {state.backoff:g} s")
        return False

    def read_to_ending(self, state: ShardState) -> bool:
        """Whether a closed shard (an ending sequence number in the listing) is read up to it."""
        if state.ending_sequence is None:
            return False
        return int(state.last_sequence or 0) >= int(state.ending_sequence)

    def shard_iterator(self, state: ShardState) -> str:
        """An iterator at the first record not written, or just after the shard's checkpoint, or
        at its start position."""
        arguments: Dict[str, Any] = {"StreamName": self.options.input_stream, "ShardId": state.shard_id}
        if state.resume_at is not None:
            arguments.update(ShardIteratorType="AT_SEQUENCE_NUMBER", StartingSequenceNumber=state.resume_at)
        elif state.last_sequence is not None:
            arguments.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=state.last_sequence)
        else:
            arguments.update(ShardIteratorType=self.start_position(state))
        return str(self.kinesis.get_shard_iterator(**arguments)["ShardIterator"])

    # --- failures -------------------------------------------------------------------------

    def read_failed(self, state: ShardState, error: ClientError) -> None:
        """A refused read: the stream gone, throttling, an expired iterator, or a failure.

        Raises:
            ConsumerError: the stream is missing or may not be read.
        """
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in _PERMANENT_CODES:
            raise ConsumerError(f"cannot read shard {state.shard_id} of the input stream "
                                f"{quote(self.options.input_stream)}: {describe(error)}") from error
        if code in _THROTTLED_CODES:
            self.metrics.read_retries.labels(state.shard_id, "throttled").inc()
            state.backoff = min(max(state.backoff * 2, STREAM.backoff_seconds), STREAM.max_backoff_seconds)
            state.next_read_at = self.clock() + state.backoff
            log.warning(f"shard {state.shard_id}: reads throttled ({code}); reading again in {state.backoff:g} s")
            return
        if code in _ITERATOR_CODES:
            self.metrics.read_retries.labels(state.shard_id, "iterator").inc()
            state.iterator = None
            log.warning(f"shard {state.shard_id}: the shard iterator was refused ({code}); acquiring a new one "
                        f"after sequence number {state.last_sequence or '(none: the start position)'}")
            return
        self.failing(state, describe(error))

    def failing(self, state: ShardState, why: str) -> None:
        """A read failed for another reason: back off, and give up once it has failed too long.

        Raises:
            ConsumerError: reads of the shard have failed for longer than STREAM.give_up_seconds.
        """
        now = self.clock()
        if state.failing_since is None:
            state.failing_since = now
        if now - state.failing_since > STREAM.give_up_seconds:
            raise ConsumerError(f"reading shard {state.shard_id} of the input stream "
                                f"{quote(self.options.input_stream)} has failed for over "
                                f"{STREAM.give_up_seconds:g} s: {why}")
        self.metrics.read_retries.labels(state.shard_id, "failed").inc()
        state.iterator = None
        state.backoff = min(max(state.backoff * 2, STREAM.backoff_seconds), STREAM.max_backoff_seconds)
        state.next_read_at = now + state.backoff
        log.warning(f"shard {state.shard_id}: reading failed ({why}); trying again in {state.backoff:g} s")


def describe(error: ClientError) -> str:
    """Kinesis' error code and message."""
    details = error.response.get("Error", {})
    return f"{details.get('Code', 'error')}: {details.get('Message', str(error))}"


# --- stopping ----------------------------------------------------------------------------------


def stop_on_signals(stop: threading.Event, reading: threading.Event) -> None:
    """From now on SIGTERM and SIGINT stop the consumer. Before it reads (`reading` not set:
    the model loading, the shards listed) they raise StopRequested at once, as the serve stage
    stops before it serves. Once it reads they set `stop`: the batch in flight is finished and
    checkpointed, then the consumer returns. A stop not done within STREAM.stop_seconds exits
    the process with one ERROR line and code 1 (the batch is then read again after a restart)."""
    def request_stop(signum: int, frame: Optional[FrameType]) -> None:
        if stop.is_set():
            return
        stop.set()
        if not reading.is_set():
            raise StopRequested(signum)
        log.info(f"{signal.Signals(signum).name}: finishing the batch in flight, then stopping")
        timer = threading.Timer(STREAM.stop_seconds, _stop_overdue)
        timer.daemon = True
        timer.start()

    for sig in STOP_SIGNALS:
        signal.signal(sig, request_stop)


def _stop_overdue() -> None:
    log.error(f"stream_predict failed: the batch in flight was not done {STREAM.stop_seconds:g} s after the stop "
              "signal; exiting without checkpointing it (it is read again after a restart)")
    logging.shutdown()
    os._exit(1)


# --- command line ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> ConsumerOptions:
    """Parse the CLI arguments.

    Raises:
        ValueError: with the reason, for any bad argument.
    """
    parser = StageArgumentParser(prog="stream_predict.py")
    parser.add_argument("--input-stream", required=True)
    parser.add_argument("--output-stream", required=True)
    parser.add_argument("--consumer-name", default=STREAM.consumer_default_name)
    parser.add_argument("--start-position", choices=STREAM.start_positions, default=STREAM.start_positions[0])
    parser.add_argument("--batch-size", type=int, default=STREAM.get_records_limit)
    parser.add_argument("--host", default=SERVE.default_host)
    parser.add_argument("--port", type=int, default=STREAM.consumer_default_port)
    args = parser.parse_stage_args(argv)
    for option, value in (("--input-stream", args.input_stream), ("--output-stream", args.output_stream),
                          ("--consumer-name", args.consumer_name)):
        if not _NAME.fullmatch(value):
            raise ValueError(f"{option} {quote(value)} is not a name of 1 to 128 letters, digits, '_', '.' or '-'")
    if args.input_stream == args.output_stream:
        raise ValueError("--output-stream must not be the input stream: every prediction would be read back as "
                         "an event")
    if not 1 <= args.batch_size <= STREAM.max_get_records_limit:
        raise ValueError(f"--batch-size must be in 1..{STREAM.max_get_records_limit}, got {args.batch_size}")
    if not args.host.strip():
        raise ValueError("--host is empty")
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    return ConsumerOptions(args.bucket, args.input_stream, args.output_stream, args.consumer_name,
                           args.start_position, args.batch_size, args.host, args.port)
