"""Batch-scoring benchmark: files of orders scored S3 to S3 through the real CLI.

A local S3 server (moto, on 127.0.0.1, in this process) holds one model trained by the real
train stage on a synthetic week. For each size (100k, 2M and 10M rows by default) a synthetic
orders file (`order_id,orders_placed,product_code`) is generated a chunk at a time and
uploaded by multipart upload, never held whole in memory; then the real CLI
`python -m pipeline.score_batch BUCKET INPUT OUTPUT` runs as a subprocess. Measured: its
wall time from process start to exit (start-up, model load, download, scoring, upload),
rows per second, and its peak resident memory (`ru_maxrss` of that child, from `wait4`).
The load average of the machine is recorded before each run: the 2 cores are shared.

Targets (issue "Batch scoring and backfill"): 2,000,000 rows in at most 30 s and 400 MB peak
RSS, with memory flat as the file grows. Usage, from the repository root (on a shared
machine, under a lock so that no two benchmarks overlap):

    flock /tmp/ttd-bench.lock env PYTHONPATH=. .venv/bin/python benchmarks/batch_benchmark.py \\
        --json benchmarks/results/batch.json --text benchmarks/results/batch.txt
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pandas as pd

from pipeline.settings import ENVIRONMENT, LOCAL
from benchmarks import use_throwaway_signing_key
from pipeline.local.local_s3 import LocalS3
from pipeline.local.synthetic import generate_orders, generate_weeks
from pipeline.storage.client import s3_client
from pipeline.storage.datasets import put_dataset
from pipeline.storage.multipart import MultipartWriter

DEFAULT_SIZES = (100_000, 2_000_000, 10_000_000)
GENERATE_CHUNK_ROWS = 500_000
TARGET_ROWS, TARGET_SECONDS, TARGET_RSS_MB = 2_000_000, 30.0, 400.0


def train_model(bucket: str) -> str:
    """Train and persist a model with the real train stage; returns its artefact id."""
    from pipeline.train.stage import train

    week = generate_weeks(1, seed=100)[0]
    put_dataset(bucket, generate_orders(1000, seed=4), week.timestamp)
    return train(bucket, 0.9, 0.95).artefact_id


def upload_orders(bucket: str, key: str, rows: int) -> int:
    """Upload a synthetic orders file of `rows` rows, a chunk at a time; returns its bytes."""
    with MultipartWriter(bucket, key, part_bytes=16 * 2**20) as out:
        for start in range(0, rows, GENERATE_CHUNK_ROWS):
            n = min(GENERATE_CHUNK_ROWS, rows - start)
            chunk = generate_orders(n, seed=start)
            frame = pd.DataFrame({
                "order_id": np.arange(start, start + n),
                "orders_placed": chunk["orders_placed"],
                "product_code": chunk["product_code"],
            })
            out.write(frame.to_csv(index=False, header=start == 0).encode())
        out.complete()
        return out.bytes_written


def run_cli(bucket: str, input_key: str, output_key: str, env: Dict[str, str]) -> Dict[str, Any]:
    """Run the CLI; its wall time, peak RSS (MiB) and exit code.

    Also the CPU time of the CLI and of this process (the local S3 server, serving the
    download and taking the upload) meanwhile: on a shared machine the wall time depends on
    the load, the CPU time much less. The peak is the child's VmHWM from /proc, read every 20 ms until it exits. (Its
    `ru_maxrss` would not do: it counts the pages of this process, which holds the S3
    server's data, between fork and exec.)
    """
    before = resource.getrusage(resource.RUSAGE_SELF)
    server_cpu_before = before.ru_utime + before.ru_stime
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.score_batch", bucket, input_key, output_key],
            cwd=LOCAL.repo_root, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
        )
        peak_kib = 0
        while True:
            peak_kib = max(peak_kib, _vm_hwm_kib(process.pid))
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid == process.pid:
                break
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        server = resource.getrusage(resource.RUSAGE_SELF)
        log.seek(0)
        lines = log.read().strip().splitlines()
    return {"seconds": seconds, "peak_rss_mib": peak_kib / 1024, "exit_code": process.returncode,
            "cli_cpu_seconds": usage.ru_utime + usage.ru_stime,
            "local_s3_cpu_seconds": server.ru_utime + server.ru_stime - server_cpu_before,
            "log": lines[-1] if lines else ""}


def _line(r: Dict[str, Any]) -> str:
    return (f"{r['rows']:>12,} rows: {r['seconds']:6.1f} s, {r['rows_per_second']:>9,.0f} rows/s, "
            f"peak RSS {r['peak_rss_mib']:5.0f} MiB, CPU {r['cli_cpu_seconds']:5.1f} s (CLI) + "
            f"{r['local_s3_cpu_seconds']:5.1f} s (local S3), load average {r['load_average_1_5_15'][0]:.1f}")


def _vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def main(sizes: List[int], json_path: str, text_path: str) -> None:
    results: List[Dict[str, Any]] = []
    use_throwaway_signing_key()
    with LocalS3() as s3:
        s3.point_environment_here()
        bucket = s3.create_bucket("batch-benchmark")
        model_id = train_model(bucket)
        env = {**os.environ, ENVIRONMENT.python_path: str(LOCAL.repo_root)}
        for rows in sizes:
            key = f"in/orders_{rows}.csv"
            size = upload_orders(bucket, key, rows)
            load = os.getloadavg()
            run = run_cli(bucket, key, f"out/orders_{rows}.csv", env)
            out_size = s3_client().head_object(Bucket=bucket, Key=f"out/orders_{rows}.csv")["ContentLength"]
            results.append({"rows": rows, "input_bytes": size, "output_bytes": out_size,
                            "rows_per_second": rows / run["seconds"], "load_average_1_5_15": load, **run})
            print(_line(results[-1]), f"exit {run['exit_code']}", flush=True)
            s3_client().delete_object(Bucket=bucket, Key=key)
    report = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "model_artefact_id": model_id,
        "command": "python -m pipeline.score_batch BUCKET INPUT OUTPUT",
        "targets": {"rows": TARGET_ROWS, "max_seconds": TARGET_SECONDS, "max_peak_rss_mb": TARGET_RSS_MB},
        "runs": results,
    }
    Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"batch scoring, S3 to S3 through the CLI, {report['when']}, Python {report['python']}, "
             f"{report['cpus']} cores (shared)"]
    lines += [_line(r) for r in results]
    Path(text_path).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--json", default="benchmarks/results/batch.json")
    parser.add_argument("--text", default="benchmarks/results/batch.txt")
    arguments = parser.parse_args()
    main(arguments.rows, arguments.json, arguments.text)
