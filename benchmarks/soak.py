"""Soak and SIGTERM-under-load of the real serve stage.

    PYTHONPATH=. python benchmarks/soak.py --minutes 10 --rate 200 --text benchmarks/results/soak.txt

1. Starts the local S3 with synthetic weeks, runs the train stage (`stage.train`) with a random signing
   key, and starts the serve stage's CLI in a subprocess on a free loopback port.
2. Soak: sends `--rate` requests a second (single predictions, one batch of 100 in every 50
   requests) for `--minutes`, from `--workers` keep-alive connections, paced to a fixed
   schedule; counts every answer that is not 200 as an error and samples the service's
   resident memory every 10 s. Memory is "flat" when every sample after the first minute is
   within 5% of the sample at one minute.
3. SIGTERM under load: `--workers` connections send requests back to back; after 5 s the
   service gets SIGTERM. Every request whose bytes were sent before the signal must get a 200;
   requests sent after it may be refused (the port is closing), which is counted apart.
"""
import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from pipeline.settings import API, ENVIRONMENT, LOCAL
from benchmarks import use_throwaway_signing_key
from pipeline.local.local_s3 import LocalS3, seed_weeks
from pipeline.train.stage import train

REQUEST = json.dumps({"product_code": "SKU003", "orders_placed": 112}).encode()
BATCH = json.dumps([{"product_code": f"SKU00{1 + i % 5}", "orders_placed": i} for i in range(100)]).encode()
HEADERS = {"Content-Type": "application/json"}


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((LOCAL.loopback_host, 0))
        return int(sock.getsockname()[1])


def start_service(bucket: str, port: int) -> "subprocess.Popen[bytes]":
    env = {**os.environ, ENVIRONMENT.python_path: str(LOCAL.repo_root)}
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.serve_model", bucket, "--host", LOCAL.loopback_host, "--port", str(port)],
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


def soak(port: int, pid: int, minutes: float, rate: float, workers: int) -> Dict[str, Any]:
    end = time.monotonic() + minutes * 60
    counts = {"ok": 0, "errors": 0}
    lock = threading.Lock()
    interval = workers / rate

    def work(offset: float) -> None:
        connection = http.client.HTTPConnection(LOCAL.loopback_host, port, timeout=10)
        due = time.monotonic() + offset
        n = 0
        while due < end:
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            n += 1
            path, body = (API.predict_batch_path, BATCH) if n % 50 == 0 else (API.predict_path, REQUEST)
            try:
                connection.request("POST", path, body=body, headers=HEADERS)
                response = connection.getresponse()
                response.read()
                good = response.status == 200
            except (OSError, http.client.HTTPException):
                good = False
                connection.close()
                connection = http.client.HTTPConnection(LOCAL.loopback_host, port, timeout=10)
            with lock:
                counts["ok" if good else "errors"] += 1
            due += interval

    threads = [threading.Thread(target=work, args=(i * interval / workers,)) for i in range(workers)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    samples: List[List[float]] = []
    while any(thread.is_alive() for thread in threads):
        samples.append([round(time.monotonic() - started, 1), round(resident_mb(pid), 1)])
        time.sleep(10)
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    baseline = next((mb for t, mb in samples if t >= 60), samples[-1][1])
    later = [mb for t, mb in samples if t >= 60]
    drift = max(abs(mb - baseline) / baseline for mb in later) if later else 0.0
    return {
        "minutes": minutes, "target_rate": rate, "achieved_rate": round((counts["ok"] + counts["errors"]) / elapsed, 1),
        "requests": counts["ok"] + counts["errors"], "errors": counts["errors"],
        "rss_mb_at_1_min": baseline, "rss_mb_max": max(mb for _, mb in samples),
        "rss_mb_last": samples[-1][1], "rss_largest_deviation_from_1_min_percent": round(100 * drift, 2),
        "rss_flat_within_5_percent": drift <= 0.05, "rss_samples": samples,
    }


def sigterm_under_load(process: "subprocess.Popen[bytes]", port: int, workers: int) -> Dict[str, Any]:
    signalled: Optional[float] = None
    results: List[Dict[str, Any]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def work() -> None:
        connection: Optional[http.client.HTTPConnection] = None
        while not stop.is_set():
            sent_at = None
            try:
                if connection is None:
                    connection = http.client.HTTPConnection(LOCAL.loopback_host, port, timeout=30)
                connection.putrequest("POST", API.predict_path)
                connection.putheader("Content-Type", "application/json")
                connection.putheader("Content-Length", str(len(REQUEST)))
                connection.endheaders(REQUEST)
                sent_at = time.monotonic()
                response = connection.getresponse()
                response.read()
                outcome = response.status
            except (OSError, http.client.HTTPException) as error:
                outcome = type(error).__name__
                if connection is not None:
                    connection.close()
                connection = None
                if sent_at is None:
                    sent_at = time.monotonic()
                    outcome = f"not sent: {outcome}"
                time.sleep(0.05)
            with lock:
                results.append({"sent_at": sent_at, "outcome": outcome})

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    time.sleep(5)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=60)
    stopped = time.monotonic()
    stop.set()
    for thread in threads:
        thread.join()
    before = [r for r in results if r["sent_at"] < signalled]
    failed_before = [r for r in before if r["outcome"] != 200]
    after = [r for r in results if r["sent_at"] >= signalled]
    return {
        "workers": workers, "requests_sent_before_sigterm": len(before),
        "failed_of_those": len(failed_before), "failures": [str(r["outcome"]) for r in failed_before][:10],
        "requests_after_sigterm": len(after),
        "answered_200_after_sigterm": sum(1 for r in after if r["outcome"] == 200),
        "exit_code": code, "seconds_from_sigterm_to_exit": round(stopped - signalled, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0, help="requests a second during the soak")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--text", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()

    use_throwaway_signing_key()
    with LocalS3() as s3:
        s3.point_environment_here()
        bucket = s3.create_bucket()
        seed_weeks(bucket, 2)
        train(bucket, 0.9, 0.95)
        port = free_port()
        process = start_service(bucket, port)
        try:
            report = {"soak": soak(port, process.pid, args.minutes, args.rate, args.workers),
                      "sigterm": sigterm_under_load(process, port, args.workers)}
        finally:
            if process.poll() is None:
                process.kill()
    command = "PYTHONPATH=. python benchmarks/soak.py " + " ".join(sys.argv[1:])
    text = f"$ {command}\n{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, {os.cpu_count()} CPUs, " \
           f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n" + json.dumps(report, indent=2) + "\n"
    print(text)
    if args.text:
        args.text.write_text(text)


if __name__ == "__main__":
    main()
