"""A valid client's latency while hostile clients run against the real serve stage.

    PYTHONPATH=. python benchmarks/hostile_load.py --seconds 15 --text benchmarks/results/hostile_load.txt

1. Starts the local S3 with synthetic weeks, runs the train stage (`stage.train`) with a random signing
   key, and starts the serve stage's CLI in a subprocess on a free loopback port, once per server stack
   (`--stacks`, the deployment's `auto` and the `pure-python` fallback).
2. Three phases of `--seconds` each, while a separate client sends `--rate` single predictions a
   second on one keep-alive connection, paced to a fixed schedule, and times each answer:
   - `alone`: nothing else runs;
   - `slowloris`: `--slow-sockets` sockets each send a request line and a header but never the
     blank line, and reconnect as soon as the service closes them;
   - `slowloris_and_amplification`: the same, and `--amplifiers` clients post, back to back, the
     979 KB body `{"k0":0,...,"k89999":0}`, whose 422 lists an error per key until the errors
     reported are bounded.
   Reported per phase: the valid client's answers by status, its p50, p99 and largest latency
   (every answer, whatever its status), and how often the slow sockets were closed by the service.
"""
import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List

import numpy as np

from benchmarks import use_throwaway_signing_key
from pipeline.local.local_s3 import LocalS3, seed_weeks
from pipeline.settings import API, ENVIRONMENT, LOCAL
from pipeline.train.stage import train

REQUEST = json.dumps({"product_code": "SKU003", "orders_placed": 112}).encode()
AMPLIFYING = ("{" + ",".join(f'"k{i}":0' for i in range(90_000)) + "}").encode()
HEADERS = {"Content-Type": "application/json"}
PARTIAL_HEAD = f"GET {API.health_path} HTTP/1.1\r\nHost: bench\r\nX-Slow: 1\r\n".encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCAL.loopback_host, 0))
        return int(sock.getsockname()[1])


def start_service(bucket: str, port: int, stack: str) -> "subprocess.Popen[bytes]":
    env = {**os.environ, ENVIRONMENT.python_path: str(LOCAL.repo_root)}
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.serve_model", bucket, "--host", LOCAL.loopback_host, "--port", str(port),
         "--server-stack", stack],
        env=env, cwd=LOCAL.repo_root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection(LOCAL.loopback_host, port, timeout=2)
            connection.request("GET", API.ready_path)
            if connection.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the service did not become ready")


def valid_client(port: int, seconds: float, rate: float) -> Dict[str, Any]:
    """Single predictions at `rate` a second for `seconds` (none sent after that, however slow
    the answers): statuses and latencies."""
    latencies: List[float] = []
    statuses: Dict[str, int] = {}
    connection = http.client.HTTPConnection(LOCAL.loopback_host, port, timeout=30)
    start = time.monotonic()
    for index in range(int(seconds * rate)):
        due = start + index / rate
        if time.monotonic() > start + seconds:
            break
        time.sleep(max(0.0, due - time.monotonic()))
        sent = time.monotonic()
        try:
            connection.request("POST", API.predict_path, REQUEST, HEADERS)
            response = connection.getresponse()
            response.read()
            outcome = str(response.status)
            if response.getheader("connection", "").lower() == "close":
                connection.close()
        except (OSError, http.client.HTTPException) as error:
            outcome = type(error).__name__
            connection.close()
            connection = http.client.HTTPConnection(LOCAL.loopback_host, port, timeout=30)
        latencies.append(time.monotonic() - sent)
        statuses[outcome] = statuses.get(outcome, 0) + 1
    connection.close()
    milliseconds = np.array(latencies) * 1000
    return {"requests": len(latencies), "statuses": statuses,
            "p50_ms": round(float(np.percentile(milliseconds, 50)), 2),
            "p99_ms": round(float(np.percentile(milliseconds, 99)), 2),
            "max_ms": round(float(milliseconds.max()), 2)}


def slow_socket(port: int, stop: threading.Event, closed: List[int]) -> None:
    """One slowloris socket: a head that never ends, reopened whenever the service closes it."""
    while not stop.is_set():
        try:
            with socket.create_connection((LOCAL.loopback_host, port), timeout=1) as sock:
                sock.sendall(PARTIAL_HEAD)
                while not stop.is_set():
                    try:
                        if not sock.recv(65536):
                            break
                    except socket.timeout:
                        continue
                    break  # answered (408): the service is closing it
                if not stop.is_set():
                    closed.append(1)
        except OSError:
            time.sleep(0.05)


def amplifier(port: int, stop: threading.Event, sent: List[int]) -> None:
    """Posts the amplifying body back to back."""
    while not stop.is_set():
        try:
            connection = http.client.HTTPConnection(LOCAL.loopback_host, port, timeout=60)
            connection.request("POST", API.predict_path, AMPLIFYING, HEADERS)
            connection.getresponse().read()
            connection.close()
            sent.append(1)
        except (OSError, http.client.HTTPException):
            time.sleep(0.05)


def phase(port: int, seconds: float, rate: float, hostile: List[Callable[[threading.Event], None]]) -> Dict[str, Any]:
    stop = threading.Event()
    threads = [threading.Thread(target=target, args=(stop,), daemon=True) for target in hostile]
    for thread in threads:
        thread.start()
    if threads:
        time.sleep(1.0)  # let the hostile clients take their places
    try:
        result = valid_client(port, seconds, rate)
        print(f"{len(hostile)} hostile clients: {result}", file=sys.stderr, flush=True)
        return result
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)


def run_stack(bucket: str, stack: str, args: argparse.Namespace) -> Dict[str, Any]:
    port = free_port()
    process = start_service(bucket, port, stack)
    try:
        report: Dict[str, Any] = {"alone": phase(port, args.seconds, args.rate, [])}
        closed: List[int] = []
        slow = [lambda stop: slow_socket(port, stop, closed)] * args.slow_sockets
        report["slowloris"] = {**phase(port, args.seconds, args.rate, slow), "slow_sockets_closed": len(closed)}
        closed.clear()
        sent: List[int] = []
        loud = [lambda stop: amplifier(port, stop, sent)] * args.amplifiers
        report["slowloris_and_amplification"] = {
            **phase(port, args.seconds, args.rate, slow + loud),
            "slow_sockets_closed": len(closed), "amplifying_requests_answered": len(sent)}
        return report
    finally:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    parser.add_argument("--rate", type=float, default=50.0, help="the valid client's requests a second")
    parser.add_argument("--slow-sockets", type=int, default=70)
    parser.add_argument("--amplifiers", type=int, default=2)
    parser.add_argument("--stacks", nargs="+", default=["auto", "pure-python"])
    parser.add_argument("--text", default=None, help="also write the report here")
    args = parser.parse_args()

    use_throwaway_signing_key()
    with LocalS3() as s3:
        s3.point_environment_here()
        bucket = s3.create_bucket()
        seed_weeks(bucket, 2)
        train(bucket, 0.9, 0.95)
        report = {stack: run_stack(bucket, stack, args) for stack in args.stacks}
    command = "PYTHONPATH=. python benchmarks/hostile_load.py " + " ".join(sys.argv[1:])
    text = f"$ {command}\n{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, {os.cpu_count()} CPUs, " \
           f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n" + json.dumps(report, indent=2) + "\n"
    print(text)
    if args.text:
        with open(args.text, "w") as out:
            out.write(text)


if __name__ == "__main__":
    main()
