"""The stream consumer: every shard read, nothing lost across a crash, a stop or a reshard.

Streams and the bucket are real, on the local server over HTTP; the consumer runs as a real
process (`python -m pipeline.stream_predict`) where the contract is the process.
"""
import json
import random
import signal
import threading
from collections import Counter
from typing import Any, Dict, List, Tuple

import pytest
from botocore.exceptions import ClientError
from fastapi.testclient import TestClient

from pipeline.artefact.model import Model
from pipeline.serve.api import create_app
from pipeline.settings import API, ENVIRONMENT, LAYOUT, LOCAL, SERVE, STREAM
from pipeline.streaming import consumer as consumer_module
from pipeline.streaming.checkpoints import Checkpoint, CheckpointStore
from pipeline.streaming.consumer import Consumer, ConsumerOptions, ShardState, parse_args
from pipeline.streaming.consumer_metrics import ConsumerMetrics, ConsumerStatus, StatusServer
from pipeline.streaming.core import BatchResult
from pipeline.streaming.output import DeadLetterStore
from tests.helpers import (
    AwsFaultProxy,
    StartService,
    create_stream,
    dead_letter_lines,
    free_port,
    http_status,
    parse_metrics,
    put_events,
    read_stream_json,
    stop_service,
    wait_for,
    wait_until_ready,
)

# Small batches, so that a crash falls between batches of a few hundred events.
BATCH_SIZE = 20


def make_events(model: Model, count: int, seed: int = 5, malformed_every: int = 10) -> Tuple[List[bytes], List[str]]:
    """`count` events as the shop's platform puts them, every `malformed_every`-th one malformed
    in one of several ways; their bytes and partition keys."""
    rng = random.Random(seed)
    codes = list(model.product_codes)
    malformed = [
        lambda i: b"not json at all",
        lambda i: json.dumps([f"ORD-{i:05d}"]).encode(),
        lambda i: json.dumps({"order_id": f"ORD-{i:05d}", "product_code": codes[0], "orders_placed": -3}).encode(),
        lambda i: json.dumps({"order_id": f"ORD-{i:05d}", "product_code": "SKU999", "orders_placed": 12}).encode(),
        lambda i: json.dumps({"product_code": codes[0], "orders_placed": 12}).encode(),
        lambda i: json.dumps({"order_id": f"ORD-{i:05d}", "product_code": codes[1], "orders_placed": "12"}).encode(),
        lambda i: b"\xff\xfe not utf-8",
    ]
    events, keys = [], []
    for i in range(count):
        if i % malformed_every == malformed_every - 1:
            events.append(malformed[(i // malformed_every) % len(malformed)](i))
        else:
            events.append(json.dumps({"order_id": f"ORD-{i:05d}", "product_code": rng.choice(codes),
                                      "orders_placed": rng.choice([rng.randint(0, 320), rng.uniform(0, 320)]),
                                      "channel": "web"}).encode())
        keys.append(f"ORD-{i:05d}")
    return events, keys


def valid_events(events: List[bytes]) -> Dict[str, Dict[str, Any]]:
    """The valid events by order_id (those the test made valid)."""
    found = {}
    for data in events:
        try:
            event = json.loads(data)
        except ValueError:
            continue
        if (isinstance(event, dict) and isinstance(event.get("order_id"), str) and event.get("channel") == "web"):
            found[event["order_id"]] = event
    return found


def rest_predictions(model: Model, events: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """What the REST API's batch endpoint answers for each event's product_code and orders_placed."""
    client = TestClient(create_app(model))
    ids = sorted(events)
    answers: List[Dict[str, Any]] = []
    for start in range(0, len(ids), 1000):
        body = [{"product_code": events[i]["product_code"], "orders_placed": events[i]["orders_placed"]}
                for i in ids[start:start + 1000]]
        response = client.post(API.predict_batch_path, json=body)
        assert response.status_code == 200, response.text
        answers += response.json()
    return dict(zip(ids, answers))


def consumer_args(bucket: str, input_stream: str, output_stream: str, batch_size: int = BATCH_SIZE) -> List[str]:
    return ["-m", "pipeline.stream_predict", bucket, "--input-stream", input_stream, "--output-stream",
            output_stream, "--batch-size", str(batch_size)]


def total(scrape: Any, name: str) -> float:
    """The sum of every sample named `name`."""
    return sum(value for _, value in scrape.series(name))


def scrape_of(url: str) -> Any:
    return parse_metrics(http_status(f"{url}{API.metrics_path}")[1])


def duplicates(predictions: List[Dict[str, Any]]) -> int:
    """How many predictions repeat an order_id already on the stream."""
    return sum(n - 1 for n in Counter(p["order_id"] for p in predictions).values())


# --- the crash test ------------------------------------------------------------------------------


# The crash test's consumer writes its checkpoints through a proxy that forwards them this much
# later: the consumer then spends most of its time between a batch's predictions written and its
# checkpoint, so that the kill falls there, where it makes duplicates, rather than between batches.
SLOW_CHECKPOINT_SECONDS = 0.3


@pytest.mark.e2e
def test_a_consumer_killed_mid_stream_and_restarted_loses_nothing_and_repeats_at_most_a_batch_per_shard(
    s3: Any, kinesis: Any, bucket_with_model: str, trained_model: Model, s3_env: Dict[str, str],
    start: StartService, aws_proxy: AwsFaultProxy,
) -> None:
    input_stream, output_stream = create_stream(kinesis, shards=2), create_stream(kinesis, shards=1)
    events, keys = make_events(trained_model, 600)
    valid = valid_events(events)
    put_events(kinesis, input_stream, events, keys)
    args = consumer_args(bucket_with_model, input_stream, output_stream)
    aws_proxy.slow_s3_puts_under = (LAYOUT.stream_checkpoints_prefix, SLOW_CHECKPOINT_SECONDS)

    first = start(args, {**s3_env, ENVIRONMENT.aws_endpoint_url: aws_proxy.endpoint})
    wait_for(lambda: len(read_stream_json(kinesis, output_stream)) >= len(valid) // 3,
             "a third of the predictions written", service=first)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    before_restart = len(read_stream_json(kinesis, output_stream))
    second = start(args, s3_env)
    wait_for(lambda: {p["order_id"] for p in read_stream_json(kinesis, output_stream)} >= set(valid),
             "every valid order_id on the output stream", service=second)
    wait_for(lambda: len(dead_letter_lines(s3, bucket_with_model, LAYOUT.stream_dead_letters_prefix))
             >= len(events) - len(valid), "every malformed event dead-lettered", service=second)
    assert stop_service(second) == 0

    predictions = read_stream_json(kinesis, output_stream)
    letters = dead_letter_lines(s3, bucket_with_model, LAYOUT.stream_dead_letters_prefix)
    repeated, repeated_letters = duplicates(predictions), len(letters) - (len(events) - len(valid))
    print(f"\ncrash test: {len(events)} events ({len(valid)} valid, {len(events) - len(valid)} malformed) on 2 "
          f"shards, batches of {BATCH_SIZE}; killed with SIGKILL (checkpoints {SLOW_CHECKPOINT_SECONDS:g} s slow) "
          f"after {before_restart} predictions were written; "
          f"after the restart {len(predictions)} predictions ({repeated} duplicates) and {len(letters)} dead letters "
          f"({repeated_letters} duplicates); bound: {2 * BATCH_SIZE}")
    assert 0 < before_restart < len(valid)
    assert repeated + repeated_letters <= 2 * BATCH_SIZE
    expected = rest_predictions(trained_model, valid)
    wrong = [p["order_id"] for p in predictions
             if p != {**valid[p["order_id"]], **expected[p["order_id"]], "artefact_id": trained_model.artefact_id}]
    assert wrong == []
    malformed = {(i, data) for i, data in enumerate(events) if keys[i] not in valid}
    lettered = {(keys.index(line["partition_key"]), __import__("base64").b64decode(line["data_base64"]))
                for line in letters}
    assert lettered == malformed
    assert all(line["reason"] for line in letters)


# --- stopping ------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_sigterm_mid_stream_finishes_the_batch_checkpoints_and_exits_0_and_a_restart_repeats_nothing(
    s3: Any, kinesis: Any, bucket_with_model: str, trained_model: Model, s3_env: Dict[str, str],
    start: StartService,
) -> None:
    input_stream, output_stream = create_stream(kinesis, shards=2), create_stream(kinesis, shards=1)
    events, keys = make_events(trained_model, 400, malformed_every=10**6)
    put_events(kinesis, input_stream, events, keys)
    args = consumer_args(bucket_with_model, input_stream, output_stream)

    first = start(args, s3_env)
    wait_for(lambda: len(read_stream_json(kinesis, output_stream)) >= 100, "100 predictions written", service=first)
    code = stop_service(first)
    written = read_stream_json(kinesis, output_stream)
    checkpoints = CheckpointStore(bucket_with_model, s3, STREAM.consumer_default_name, input_stream).load_all()
    second = start(args, s3_env)
    wait_for(lambda: len(read_stream_json(kinesis, output_stream)) >= len(events), "every prediction written",
             service=second)
    stop_service(second)

    assert code == 0
    assert "SIGTERM: finishing the batch in flight, then stopping" in first.log()
    assert len(written) < len(events)
    assert sum(int(c.sequence_number or 0) for c in checkpoints.values()) == len(written)  # moto numbers 1, 2, ...
    assert duplicates(read_stream_json(kinesis, output_stream)) == 0


# --- resharding ----------------------------------------------------------------------------------


@pytest.mark.e2e
def test_after_a_split_the_closed_parent_is_read_to_its_end_before_its_children(
    s3: Any, kinesis: Any, bucket_with_model: str, trained_model: Model, s3_env: Dict[str, str],
    start: StartService,
) -> None:
    # moto's server routes records put after a split to the closed parent, which Kinesis never
    # does: the events are all put before the split, so the parent holds them all.
    input_stream, output_stream = create_stream(kinesis, shards=1), create_stream(kinesis, shards=1)
    events, keys = make_events(trained_model, 120, malformed_every=10**6)
    put_events(kinesis, input_stream, events, keys)
    kinesis.update_shard_count(StreamName=input_stream, TargetShardCount=2, ScalingType="UNIFORM_SCALING")
    shards = kinesis.list_shards(StreamName=input_stream)["Shards"]
    parent = next(s["ShardId"] for s in shards if "ParentShardId" not in s)
    children = sorted(s["ShardId"] for s in shards if s.get("ParentShardId") == parent)

    consumer = start(consumer_args(bucket_with_model, input_stream, output_stream), s3_env)
    wait_until_ready(consumer)
    wait_for(lambda: len(read_stream_json(kinesis, output_stream)) >= len(events), "every prediction written",
             service=consumer)
    wait_for(lambda: all(scrape_of(consumer.url).series("time_to_dispatch_stream_millis_behind_latest", shard_id=child)
                         for child in children), "the children read", service=consumer)
    scrape = scrape_of(consumer.url)
    stop_service(consumer)

    assert len(children) == 2
    assert scrape.value("time_to_dispatch_stream_shard_finished", shard_id=parent) == 1.0
    assert CheckpointStore(bucket_with_model, s3, STREAM.consumer_default_name, input_stream).load_all()[parent] \
        == Checkpoint(parent, str(len(events)), True)
    assert sorted(p["order_id"] for p in read_stream_json(kinesis, output_stream)) == sorted(keys)
    log = consumer.log()
    assert log.index(f"shard {parent} is closed and read to its end") < log.index("its children are read next")


def test_a_child_shard_is_not_read_before_its_parents_are_finished() -> None:
    consumer = Consumer.__new__(Consumer)
    consumer.shards = {
        "p": ShardState("p", [], "10", None),
        "a": ShardState("a", ["p"], None, None),
        "q": ShardState("q", [], None, Checkpoint("q", "5", True)),
        "m": ShardState("m", ["q", "gone"], None, None),
    }

    assert [s.shard_id for s in consumer.readable()] == ["p", "m"]


# --- metrics and readiness -----------------------------------------------------------------------


@pytest.mark.e2e
def test_metrics_count_the_records_by_shard_and_name_the_model(
    kinesis: Any, bucket_with_model: str, trained_model: Model, s3_env: Dict[str, str], start: StartService,
) -> None:
    input_stream, output_stream = create_stream(kinesis, shards=2), create_stream(kinesis, shards=1)
    events, keys = make_events(trained_model, 50, malformed_every=5)
    put_events(kinesis, input_stream, events, keys)
    consumer = start(consumer_args(bucket_with_model, input_stream, output_stream), s3_env)
    wait_until_ready(consumer)
    wait_for(lambda: len(read_stream_json(kinesis, output_stream)) >= 40, "every prediction written", service=consumer)

    wait_for(lambda: total(scrape_of(consumer.url), "time_to_dispatch_stream_records_read_total") == 50,
             "every record counted", service=consumer)
    scrape = scrape_of(consumer.url)
    shards = [s["ShardId"] for s in kinesis.list_shards(StreamName=input_stream)["Shards"]]
    stop_service(consumer)

    assert total(scrape, "time_to_dispatch_stream_records_written_total") == 40
    assert total(scrape, "time_to_dispatch_stream_records_dead_lettered_total") == 10
    assert sorted(labels["shard_id"] for labels, _ in scrape.series("time_to_dispatch_stream_records_read_total")) \
        == sorted(shards)
    assert [value for _, value in scrape.series("time_to_dispatch_stream_model_info",
                                                artefact_id=trained_model.artefact_id,
                                                model_version=str(trained_model))] == [1.0]
    assert [labels["shard_id"] for labels, _ in scrape.series("time_to_dispatch_stream_millis_behind_latest")] \
        == sorted(shards)
    assert total(scrape, "time_to_dispatch_stream_batch_duration_seconds_count") >= 2


@pytest.mark.e2e
def test_the_consumer_answers_ready_and_healthy_once_reading(
    kinesis: Any, bucket_with_model: str, s3_env: Dict[str, str], start: StartService,
) -> None:
    consumer = start(consumer_args(bucket_with_model, create_stream(kinesis), create_stream(kinesis)), s3_env)
    wait_until_ready(consumer)

    answers = [http_status(f"{consumer.url}{path}")[0] for path in (API.ready_path, API.health_path, "/nothing")]
    stop_service(consumer)

    assert answers == [200, 200, 404]


def test_ready_answers_503_until_the_shards_are_read_and_metrics_are_prometheus_text() -> None:
    status = ConsumerStatus()
    server = StatusServer(LOCAL.loopback_host, free_port(), ConsumerMetrics(), status).start()
    try:
        url = f"http://{LOCAL.loopback_host}:{server.address[1]}"
        before = http_status(f"{url}{API.ready_path}")
        status.set_ready()
        after = http_status(f"{url}{API.ready_path}")
        health = http_status(f"{url}{API.health_path}")
        metrics = http_status(f"{url}{API.metrics_path}")
    finally:
        server.stop()

    assert (before[0], after[0], health[0]) == (503, 200, 200)
    assert "# TYPE time_to_dispatch_stream_batch_duration_seconds histogram" in metrics[1]


# --- failures the consumer rides out -------------------------------------------------------------


class FlakyKinesis:
    """The local server's Kinesis client, whose GetRecords fails first with the errors given."""

    def __init__(self, client: Any, errors: List[str]) -> None:
        self.client = client
        self.errors = list(errors)
        self.iterator_requests: List[Dict[str, Any]] = []

    def get_records(self, **kwargs: Any) -> Any:
        if self.errors:
            code = self.errors.pop(0)
            raise ClientError({"Error": {"Code": code, "Message": "injected"}}, "GetRecords")
        return self.client.get_records(**kwargs)

    def get_shard_iterator(self, **kwargs: Any) -> Any:
        self.iterator_requests.append(kwargs)
        return self.client.get_shard_iterator(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def run_consumer_until(consumer: Consumer, done: Any) -> None:
    stop = threading.Event()
    watcher = threading.Thread(target=lambda: (wait_for(done, "done", timeout=60), stop.set()), daemon=True)
    watcher.start()
    consumer.run(stop)
    watcher.join()


def in_process_consumer(s3: Any, kinesis: Any, bucket: str, model: Model, input_stream: str, output_stream: str,
                        client: Any) -> Consumer:
    options = ConsumerOptions(bucket, input_stream, output_stream, batch_size=BATCH_SIZE)
    consumer = Consumer(options, model, client, CheckpointStore(bucket, s3, options.consumer_name, input_stream),
                        DeadLetterStore(bucket, s3, options.consumer_name), ConsumerMetrics())
    consumer.start()
    return consumer


def test_an_expired_iterator_is_acquired_again_after_the_checkpoint(
    s3: Any, kinesis: Any, bucket_with_model: str, trained_model: Model, caplog: pytest.LogCaptureFixture,
) -> None:
    input_stream, output_stream = create_stream(kinesis), create_stream(kinesis)
    events, keys = make_events(trained_model, 30, malformed_every=10**6)
    put_events(kinesis, input_stream, events, keys)
    CheckpointStore(bucket_with_model, s3, STREAM.consumer_default_name, input_stream).save(
        Checkpoint("shardId-000000000000", "10"))
    flaky = FlakyKinesis(kinesis, ["ExpiredIteratorException"])
    consumer = in_process_consumer(s3, kinesis, bucket_with_model, trained_model, input_stream, output_stream, flaky)

    run_consumer_until(consumer, lambda: len(read_stream_json(kinesis, output_stream)) >= 20)

    assert [r.get("StartingSequenceNumber") for r in flaky.iterator_requests] == ["10", "10"]
    assert sorted(p["order_id"] for p in read_stream_json(kinesis, output_stream)) == sorted(keys[10:])
    assert any(r.levelname == "WARNING" and "ExpiredIteratorException" in r.getMessage() for r in caplog.records)


def test_a_first_record_not_written_is_read_again_even_where_the_shard_started_at_latest(
    s3: Any, kinesis: Any, bucket_with_model: str, trained_model: Model, monkeypatch: pytest.MonkeyPatch,
) -> None:
    input_stream, output_stream = create_stream(kinesis), create_stream(kinesis)
    batches: List[List[str]] = []

    def process_batch(records: Any, *args: Any) -> BatchResult:
        batches.append([r.sequence_number for r in records])
        return BatchResult(0, 0, list(records)) if len(batches) == 1 else BatchResult(len(records), 0, [])

    monkeypatch.setattr(consumer_module, "process_batch", process_batch)
    options = ConsumerOptions(bucket_with_model, input_stream, output_stream, start_position=STREAM.start_positions[1])
    consumer = Consumer(options, trained_model, kinesis,
                        CheckpointStore(bucket_with_model, s3, options.consumer_name, input_stream),
                        DeadLetterStore(bucket_with_model, s3, options.consumer_name), ConsumerMetrics())
    consumer.start()
    state = consumer.shards["shardId-000000000000"]
    state.iterator = consumer.shard_iterator(state)
    events, keys = make_events(trained_model, 5, malformed_every=10**6)
    put_events(kinesis, input_stream, events, keys)

    consumer.read_shard(state)
    state.next_read_at = 0.0
    consumer.read_shard(state)

    assert batches == [["1", "2", "3", "4", "5"], ["1", "2", "3", "4", "5"]]


def test_throttled_reads_back_off_with_a_warning_and_go_on(
    s3: Any, kinesis: Any, bucket_with_model: str, trained_model: Model, caplog: pytest.LogCaptureFixture,
) -> None:
    input_stream, output_stream = create_stream(kinesis), create_stream(kinesis)
    events, keys = make_events(trained_model, 10, malformed_every=10**6)
    put_events(kinesis, input_stream, events, keys)
    flaky = FlakyKinesis(kinesis, ["ProvisionedThroughputExceededException"] * 2)
    consumer = in_process_consumer(s3, kinesis, bucket_with_model, trained_model, input_stream, output_stream, flaky)

    run_consumer_until(consumer, lambda: len(read_stream_json(kinesis, output_stream)) >= 10)

    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["shard shardId-000000000000: reads throttled (ProvisionedThroughputExceededException); "
                        "reading again in 0.5 s",
                        "shard shardId-000000000000: reads throttled (ProvisionedThroughputExceededException); "
                        "reading again in 1 s"]
    assert sorted(p["order_id"] for p in read_stream_json(kinesis, output_stream)) == sorted(keys)


def test_a_batch_not_all_written_is_checkpointed_before_the_first_unwritten_record_and_read_again(
    s3: Any, kinesis: Any, bucket_with_model: str, trained_model: Model, monkeypatch: pytest.MonkeyPatch,
) -> None:
    input_stream, output_stream = create_stream(kinesis), create_stream(kinesis)
    events, keys = make_events(trained_model, 10, malformed_every=10**6)
    put_events(kinesis, input_stream, events, keys)
    batches: List[List[str]] = []

    def process_batch(records: Any, *args: Any) -> BatchResult:
        batches.append([r.sequence_number for r in records])
        # the first batch: the output stream refuses the records from the fourth on
        return BatchResult(3, 0, list(records[3:])) if len(batches) == 1 else BatchResult(len(records), 0, [])

    monkeypatch.setattr(consumer_module, "process_batch", process_batch)
    store = CheckpointStore(bucket_with_model, s3, STREAM.consumer_default_name, input_stream)
    consumer = in_process_consumer(s3, kinesis, bucket_with_model, trained_model, input_stream, output_stream,
                                   kinesis)
    state = consumer.shards["shardId-000000000000"]

    consumer.read_shard(state)
    after_first = store.load_all()["shardId-000000000000"]
    state.next_read_at = 0.0
    consumer.read_shard(state)

    assert after_first == Checkpoint("shardId-000000000000", "3", False)
    assert batches == [[str(n) for n in range(1, 11)], [str(n) for n in range(4, 11)]]
    assert state.resume_at is None
    assert store.load_all()["shardId-000000000000"].sequence_number == "10"


# --- the command line ----------------------------------------------------------------------------


def test_the_defaults_read_from_the_trim_horizon_in_batches_of_the_get_records_limit() -> None:
    options = parse_args(["bucket", "--input-stream", "orders", "--output-stream", "predictions"])

    assert options == ConsumerOptions("bucket", "orders", "predictions", STREAM.consumer_default_name,
                                      STREAM.start_positions[0], STREAM.get_records_limit, SERVE.default_host,
                                      STREAM.consumer_default_port)
    assert (options.start_position, options.batch_size, options.port) == (STREAM.start_positions[0], 500, 8001)


@pytest.mark.parametrize("extra, problem", [
    (["--output-stream", "orders"], "--output-stream must not be the input stream"),
    (["--output-stream", "out", "--batch-size", "0"], "--batch-size must be in 1..10000, got 0"),
    (["--output-stream", "out", "--consumer-name", "a/b"], "--consumer-name 'a/b' is not a name"),
    (["--output-stream", "out", "--start-position", "AT_TIMESTAMP"], "argument --start-position: invalid choice"),
    (["--output-stream", "out", "--port", "0"], "--port must be in 1..65535, got 0"),
    ([], "the following arguments are required: --output-stream"),
], ids=["same streams", "batch size", "consumer name", "start position", "port", "missing output stream"])
def test_a_bad_argument_is_refused_naming_it(extra: List[str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_args(["bucket", "--input-stream", "orders", *extra])


def test_the_stop_budget_fits_kubernetes_grace_period() -> None:
    assert STREAM.stop_seconds <= SERVE.termination_grace_seconds - 5
