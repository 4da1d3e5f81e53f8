"""The stream consumer's figures and its HTTP port: `GET /metrics`, `/ready`, `/health`.

What `/metrics` exposes (the Prometheus text format, `prometheus-client`'s exposition; named
like the serve stage's, pipeline/serve/metrics.py, with the prefix `time_to_dispatch_stream_`):

    time_to_dispatch_stream_records_read_total{shard_id}          counter, records read from the input stream
    time_to_dispatch_stream_records_written_total{shard_id}       counter, predictions written to the output stream
    time_to_dispatch_stream_records_dead_lettered_total{shard_id} counter, records written to the dead letters
    time_to_dispatch_stream_records_unwritten_total{shard_id}     counter, predictions not written after the
                                                                  retries (their records are read again)
    time_to_dispatch_stream_read_retries_total{shard_id, reason}  counter, reads throttled or re-acquired
    time_to_dispatch_stream_millis_behind_latest{shard_id}        gauge, the iterator age GetRecords reports
    time_to_dispatch_stream_shard_finished{shard_id}              gauge, 1 once a closed shard is read to its end
    time_to_dispatch_stream_batch_duration_seconds                histogram, a batch from read to checkpoint
    time_to_dispatch_stream_model_info{artefact_id, model_version, artefact_key}   1, the model in use
    process_*, python_*                                           the library's process metrics

The figures are the library's own `Counter`, `Gauge` and `Histogram`: they are updated once a
batch (not once a record) by the consumer's thread and read by the HTTP thread, so their locks
cost nothing that matters. The HTTP server is the standard library's, in a daemon thread.
"""
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from pipeline.artefact.model import Model
from pipeline.settings import API

PREFIX = "time_to_dispatch_stream"
# A batch takes milliseconds to a few seconds (the output stream's retries); the buckets
# separate both ends.
BATCH_BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

log = logging.getLogger(__name__)


class ConsumerMetrics:
    """The consumer's figures, in a registry of their own with the process's metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
        self.read = Counter(f"{PREFIX}_records_read", "Records read from the input stream, by shard.",
                            ["shard_id"], registry=self.registry)
        self.written = Counter(f"{PREFIX}_records_written", "Predictions written to the output stream, by the "
                               "shard of their input record.", ["shard_id"], registry=self.registry)
        self.dead_lettered = Counter(f"{PREFIX}_records_dead_lettered", "Input records that could not be scored, "
                                     "written to the dead letters, by shard.", ["shard_id"], registry=self.registry)
        self.unwritten = Counter(f"{PREFIX}_records_unwritten", "Predictions the output stream did not take after "
                                 "the retries; their records are read again.", ["shard_id"], registry=self.registry)
        self.read_retries = Counter(f"{PREFIX}_read_retries", "Reads of a shard that were throttled, or whose "
                                    "iterator had to be acquired again, by shard and reason.",
                                    ["shard_id", "reason"], registry=self.registry)
        self.behind = Gauge(f"{PREFIX}_millis_behind_latest", "How far the shard's reading is behind its newest "
                            "record (GetRecords' MillisBehindLatest), by shard.", ["shard_id"], registry=self.registry)
        self.finished = Gauge(f"{PREFIX}_shard_finished", "1 once a closed shard (after a reshard) is read to its "
                              "end, else 0, by shard.", ["shard_id"], registry=self.registry)
        self.batch_seconds = Histogram(f"{PREFIX}_batch_duration_seconds", "Time from a batch's read to its "
                                       "checkpoint: scoring, dead letters, predictions written.",
                                       buckets=BATCH_BUCKETS_SECONDS, registry=self.registry)
        self.model_info = Gauge(f"{PREFIX}_model_info", "The model artefact the consumer predicts with (always "
                                "1), labelled with its identity.", ["artefact_id", "model_version", "artefact_key"],
                                registry=self.registry)

    def observe_model(self, model: Model) -> None:
        """Label the model info metric with the model in use."""
        self.model_info.labels(model.artefact_id, str(model), model.artefact_key or "").set(1)

    def observe_shard(self, shard_id: str) -> None:
        """Show a shard's series from the moment it is read, with zeros."""
        for counter in (self.read, self.written, self.dead_lettered, self.unwritten):
            counter.labels(shard_id)
        self.finished.labels(shard_id).set(0)

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return bytes(generate_latest(self.registry))


class ConsumerStatus:
    """What `/ready` answers: whether the model is loaded and the shards are being read."""

    def __init__(self) -> None:
        self._ready = threading.Event()

    def set_ready(self) -> None:
        self._ready.set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()


def _handler(metrics: ConsumerMetrics, status: ConsumerStatus) -> Any:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            path = self.path.split("?", 1)[0]
            if path == API.metrics_path:
                self._answer(200, metrics.exposition(), CONTENT_TYPE_PLAIN_0_0_4)
            elif path == API.health_path:
                self._answer(200, b'{"status":"ok"}', "application/json")
            elif path == API.ready_path:
                if status.ready:
                    self._answer(200, b'{"status":"ready"}', "application/json")
                else:
                    self._answer(503, b'{"status":"starting"}', "application/json")
            else:
                self._answer(404, b'{"detail":"Not Found"}', "application/json")

        def _answer(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a scrape every few seconds must not fill the log

    return Handler


class StatusServer:
    """The consumer's HTTP port, served by a daemon thread until `stop`.

    Raises (from `start`):
        OSError: the address cannot be bound (e.g. the port is in use).
    """

    def __init__(self, host: str, port: int, metrics: ConsumerMetrics, status: ConsumerStatus) -> None:
        self.address: Tuple[str, int] = (host, port)
        self.metrics = metrics
        self.status = status
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "StatusServer":
        server = ThreadingHTTPServer(self.address, _handler(self.metrics, self.status))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="consumer HTTP", daemon=True)
        self._thread.start()
        log.info(f"serving {API.metrics_path}, {API.ready_path} and {API.health_path} on "
                 f"http://{self.address[0]}:{server.server_address[1]}")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
