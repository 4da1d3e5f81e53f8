"""Stream consumer benchmark: events through the local Kinesis and the real consumer process.

moto's server runs as a process of its own on 127.0.0.1 (S3 and Kinesis), holding one model
trained by the real train stage on a synthetic week, a 2-shard input stream and a 1-shard
output stream. The real consumer `python -m pipeline.stream_predict` runs as a subprocess.
This process offers events at a steady rate (1,000 a second by default, put_records calls of
100 every 0.1 s) for a bounded time (30 s by default), each carrying the time it was put, and
reads the output stream meanwhile. Measured:

- end-to-end records per second: predictions read back over the time from the first put to
  the last prediction read;
- put-to-output latency (p50, p99): from just before an event's put_records call to the moment
  this process read its prediction from the output stream (the reader polls every 50 ms when
  it finds nothing, which that latency includes);
- the CPU time of the consumer, of moto's server and of this process (the offering and the
  reading), from /proc, over the run: which of them is the bound.

Usage, from the repository root (on a shared machine, under the lock):

    flock /tmp/ttd-quiet env PYTHONPATH=. .venv/bin/python benchmarks/stream_consumer.py \\
        --text benchmarks/results/stream_consumer.txt
"""
import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from benchmarks import use_throwaway_signing_key
from pipeline.local.local_s3 import CREDENTIALS, create_bucket
from pipeline.local.synthetic import generate_orders, generate_weeks
from pipeline.settings import API, ENVIRONMENT, LOCAL, STREAM
from pipeline.storage.client import s3_client
from pipeline.storage.datasets import put_dataset
from pipeline.streaming.output import kinesis_client

CODES = ("SKU001", "SKU002", "SKU003", "SKU004", "SKU005")
CALLS_PER_SECOND = 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCAL.loopback_host, 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_moto(port: int) -> "subprocess.Popen[bytes]":
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", LOCAL.loopback_host, "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((LOCAL.loopback_host, port), timeout=0.5):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("moto's server did not start")


def wait_ready(url: str, process: "subprocess.Popen[bytes]") -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the consumer exited with {process.returncode}")
        try:
            with opener.open(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the consumer was not ready in time")


class Reader(threading.Thread):
    """Reads the output stream until told to stop, noting when each prediction arrived."""

    def __init__(self, stream: str) -> None:
        super().__init__(daemon=True)
        self.client = kinesis_client()
        self.stream = stream
        self.arrivals: Dict[str, float] = {}
        self.sent: Dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        shards = self.client.list_shards(StreamName=self.stream)["Shards"]
        iterators = {s["ShardId"]: self.client.get_shard_iterator(
            StreamName=self.stream, ShardId=s["ShardId"], ShardIteratorType=STREAM.start_positions[0])["ShardIterator"]
            for s in shards}
        while not self.stop.is_set():
            found = 0
            for shard_id, iterator in list(iterators.items()):
                response = self.client.get_records(ShardIterator=iterator, Limit=10_000)
                now = time.time()
                for record in response["Records"]:
                    prediction = json.loads(record["Data"])
                    self.arrivals.setdefault(prediction["order_id"], now)
                    self.sent.setdefault(prediction["order_id"], prediction["sent_at"])
                found += len(response["Records"])
                iterators[shard_id] = response["NextShardIterator"]
            if not found:
                self.stop.wait(0.05)


def offer(stream: str, rate: int, seconds: float) -> int:
    """Put `rate` events a second for `seconds`, in CALLS_PER_SECOND calls a second; returns how many."""
    client = kinesis_client()
    per_call = rate // CALLS_PER_SECOND
    rng = np.random.default_rng(3)
    started, sent = time.monotonic(), 0
    call = 0
    while time.monotonic() - started < seconds:
        due = started + call / CALLS_PER_SECOND
        time.sleep(max(0.0, due - time.monotonic()))
        now = time.time()
        entries = []
        for _ in range(per_call):
            order_id = f"ORD-{sent:08d}"
            event = {"order_id": order_id, "product_code": CODES[int(rng.integers(0, len(CODES)))],
                     "orders_placed": int(rng.integers(0, 320)), "sent_at": now}
            entries.append({"Data": json.dumps(event).encode(), "PartitionKey": order_id})
            sent += 1
        response = client.put_records(StreamName=stream, Records=entries)
        assert response.get("FailedRecordCount", 0) == 0, response
        call += 1
    return sent


def main(rate: int, seconds: float, text_path: Optional[Path]) -> Dict[str, Any]:
    use_throwaway_signing_key()
    port = free_port()
    moto = start_moto(port)
    env = {**os.environ, **CREDENTIALS, ENVIRONMENT.aws_endpoint_url: f"http://{LOCAL.loopback_host}:{port}",
           ENVIRONMENT.aws_default_region: LOCAL.region, ENVIRONMENT.python_path: str(LOCAL.repo_root)}
    os.environ.update(env)
    consumer: Optional["subprocess.Popen[bytes]"] = None
    try:
        from pipeline.train.stage import train

        bucket = create_bucket(s3_client())
        put_dataset(bucket, generate_orders(1000, seed=4), generate_weeks(1, seed=100)[0].timestamp)
        train(bucket, 0.9, 0.95)
        kinesis = kinesis_client()
        for name, shards in (("bench-orders", 2), ("bench-predictions", 1)):
            kinesis.create_stream(StreamName=name, ShardCount=shards)
        consumer_port = free_port()
        log = open(Path(os.environ.get("TMPDIR", "/tmp")) / "stream_consumer_benchmark.log", "w")
        consumer = subprocess.Popen(
            [sys.executable, "-m", "pipeline.stream_predict", bucket, "--input-stream", "bench-orders",
             "--output-stream", "bench-predictions", "--host", LOCAL.loopback_host, "--port", str(consumer_port)],
            env=env, cwd=LOCAL.repo_root, stdout=log, stderr=subprocess.STDOUT)
        wait_ready(f"http://{LOCAL.loopback_host}:{consumer_port}{API.ready_path}", consumer)
        reader = Reader("bench-predictions")
        reader.start()
        cpu_before = {"consumer": cpu_seconds(consumer.pid), "moto": cpu_seconds(moto.pid),
                      "driver": cpu_seconds(os.getpid())}
        first_put = time.time()
        sent = offer("bench-orders", rate, seconds)
        offered_seconds = time.time() - first_put
        deadline = time.monotonic() + 120
        while len(reader.arrivals) < sent and time.monotonic() < deadline:
            time.sleep(0.1)
        reader.stop.set()
        reader.join(30)
        cpu = {"consumer": cpu_seconds(consumer.pid) - cpu_before["consumer"],
               "moto": cpu_seconds(moto.pid) - cpu_before["moto"],
               "driver": cpu_seconds(os.getpid()) - cpu_before["driver"]}
        last = max(reader.arrivals.values()) if reader.arrivals else first_put
        latencies = np.array([reader.arrivals[k] - reader.sent[k] for k in reader.arrivals]) * 1000
        wall = last - first_put
        result = {
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}",
            "offered_rate": rate, "offered_seconds": round(offered_seconds, 2), "events_put": sent,
            "predictions_read": len(reader.arrivals), "batch_size": STREAM.get_records_limit,
            "end_to_end_records_per_second": round(len(reader.arrivals) / wall, 1),
            "latency_ms_p50": round(float(np.percentile(latencies, 50)), 1),
            "latency_ms_p99": round(float(np.percentile(latencies, 99)), 1),
            "latency_ms_max": round(float(latencies.max()), 1),
            "wall_seconds": round(wall, 2),
            "cpu_seconds": {k: round(v, 2) for k, v in cpu.items()},
            "cpu_share_of_one_core": {k: round(v / wall, 3) for k, v in cpu.items()},
            "consumer_cpu_us_per_record": round(cpu["consumer"] / max(1, len(reader.arrivals)) * 1e6, 1),
        }
    finally:
        if consumer is not None and consumer.poll() is None:
            consumer.terminate()
            consumer.wait(30)
        moto.terminate()
        moto.wait(30)
    text = "\n".join(f"{key}: {value}" for key, value in result.items()) + "\n"
    print(text, end="")
    if text_path is not None:
        text_path.write_text(text)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=1000, help="events offered a second (default 1000)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to offer them (default 30)")
    parser.add_argument("--text", type=Path, help="write the figures here")
    arguments = parser.parse_args()
    main(arguments.rate, arguments.seconds, arguments.text)
