"""Serve-stage benchmark: our endpoint against the framework's floor and the straightforward way,
on the fast and the pure-Python server stacks, with and without metrics; the service's cold
start, and its resident memory under use.

Several servers answer `POST /api/v0.1/time_to_dispatch` with the same request and response
schema (`build_request_model` and `Prediction` from `pipeline.serve.api`), each in its own
process, one uvicorn worker each, started and stopped the same way
(`freeze_start_up_objects`, `open_port` and `run_server`, so the same garbage-collector and
uvicorn settings as production). "Fast stack" is uvloop and httptools (the service's default),
"pure-Python stack" asyncio and h11:

- ours: the service's real app, `create_app(model)`, metrics on (the default), fast stack;
- ours_no_metrics: the same with `create_app(model, metrics=False)`: the cost of the metrics;
- ours_access_log: metrics on and the access log on (`--access-log`), one log line per
  request in the project's format (written to /dev/null here);
- ours_instrumentator: metrics off, instrumented instead with prometheus-fastapi-instrumentator
  (its defaults), when that library is installed: what a ready-made instrumentation costs;
- floor: the same route declared `async def`, returning a constant prediction, fast stack:
  what the framework costs on its own, the fastest any implementation of this route can be;
- floor_pure_python: the floor on the pure-Python stack (what the seed article's service ran on);
- straightforward: a `def` endpoint (so FastAPI runs it in its thread pool) calling the
  estimator's `predict` on a 1x2 array per request, fast stack.

The model is trained by the real train stage on a synthetic week stored in a local S3 server
(moto, on 127.0.0.1), and every server loads it from there as the service does. `wrk` drives
each server on loopback for a fixed time with a fixed number of connections from one thread,
cycling through 50 request bodies; the servers take turns, round after round, so they all
see the same conditions and the ratios are measured within one run. Figures are the median
over rounds.

Then the real CLI (`python -m pipeline.serve_model BUCKET`) is started against the same local
S3 server several times, timing process start to first successful prediction (cold start);
the last one answers 10,000 single requests over one keep-alive connection, and its VmRSS is
read from /proc, then again after 100 batch requests of 1,000 items.

Needs `wrk` (Debian/Ubuntu: `apt-get update && apt-get install -y wrk`). Usage, from the
repository root (on a shared machine, under a lock so that no two benchmarks overlap):

    flock /tmp/ttd-bench.lock env PYTHONPATH=. .venv/bin/python benchmarks/serve_benchmark.py \\
        --json benchmarks/results/serve.json --text benchmarks/results/serve.txt
"""
import argparse
import copy
import http.client
import json
import logging
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Sequence

import numpy as np
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from benchmarks import use_throwaway_signing_key
from pipeline.artefact.model import Model
from pipeline.local.synthetic import generate_orders, generate_weeks
from pipeline.model_registry.live_model import get_live_model
from pipeline.serve.api import (
    Prediction,
    PredictionRequest,
    build_request_model,
    create_app,
    validation_error_response,
)
from pipeline.serve.lifecycle import (
    FAST_STACK, PURE_PYTHON_STACK, ServerStack, freeze_start_up_objects, open_port, run_server,
)
from pipeline.settings import API, ENVIRONMENT, LOCAL
from pipeline.storage.datasets import put_dataset
from pipeline.utils import configure_logger

KINDS = ("ours", "ours_no_metrics", "ours_access_log", "ours_instrumentator", "floor", "floor_pure_python",
         "straightforward")
# The floor the hot path keeps for ours (metrics on): against the floor on the same (fast)
# stack, and against the floor on the pure-Python stack.
TARGET_THROUGHPUT_VS_FLOOR = 1.3
TARGET_THROUGHPUT_VS_PURE_PYTHON_FLOOR = 2.5
TARGET_P99_VS_PURE_PYTHON_FLOOR = 1.0
# Seven servers importing their libraries at once on a busy 2-core machine can take minutes.
START_TIMEOUT = 240.0
WRK_INSTALL_HINT = "wrk is not installed; on Debian or Ubuntu: apt-get update && apt-get install -y wrk"

# wrk's Lua side: pre-formatted requests, cycled; at the end one JSON line with the figures.
WRK_SCRIPT = """
local bodies = {BODIES}
local requests = {}
local i = 0
init = function(args)
  for n, body in ipairs(bodies) do
    requests[n] = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
  end
end
request = function()
  i = i % #requests + 1
  return requests[i]
end
done = function(summary, latency, requests)
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
    .. '"mean_us": %.1f, "non_2xx": %d, "connect_errors": %d, "read_errors": %d, '
    .. '"write_errors": %d, "timeouts": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout))
end
"""


class LoadResult(NamedTuple):
    """One wrk run against one server."""

    requests_per_second: float
    p50_ms: float
    p99_ms: float


class Server(NamedTuple):
    kind: str
    process: "subprocess.Popen[bytes]"
    port: int


# --- the apps ----------------------------------------------------------------------------------

def floor_app(model: Model) -> FastAPI:
    """The route with our request and response schema, `async def`, answering a constant."""
    request_model = build_request_model(model.product_codes)
    constant = Prediction(est_hours_to_dispatch=5.321, model_version=str(model), upper_hours_to_dispatch=6.9,
                          extrapolated=False)
    app = FastAPI()
    app.add_exception_handler(RequestValidationError, validation_error_response)

    @app.post(API.predict_path, response_model=Prediction)
    async def time_to_dispatch(request: request_model) -> Prediction:  # type: ignore[valid-type]
        return constant

    return app


def straightforward_app(model: Model) -> FastAPI:
    """The route with our schema, `def`, calling the model's vectorised `estimate` (the
    calibration's numpy search, or the estimator's `predict` on a 1x2 array) for one row."""
    request_model = build_request_model(model.product_codes)
    version = str(model)
    app = FastAPI()
    app.add_exception_handler(RequestValidationError, validation_error_response)

    @app.post(API.predict_path, response_model=Prediction)
    def time_to_dispatch(request: request_model) -> Prediction:  # type: ignore[valid-type]
        body: PredictionRequest = request
        estimate = model.estimate([body.product_code], [body.orders_placed])
        upper = estimate.upper_hours_to_dispatch
        return Prediction(est_hours_to_dispatch=float(estimate.est_hours_to_dispatch[0]), model_version=version,
                          upper_hours_to_dispatch=None if upper is None else float(upper[0]),
                          extrapolated=bool(estimate.extrapolated[0]))

    return app


def instrumentator_app(model: Model) -> FastAPI:
    """Ours without our metrics, instrumented by prometheus-fastapi-instrumentator instead."""
    from prometheus_fastapi_instrumentator import Instrumentator

    app = create_app(model, metrics=False)
    Instrumentator().instrument(app).expose(app)
    return app


def instrumentator_installed() -> bool:
    try:
        import prometheus_fastapi_instrumentator  # noqa: F401
    except ImportError:
        return False
    return True


def build_server(kind: str, model: Model) -> "tuple[FastAPI, ServerStack]":
    """The app and the server stack of a kind of server."""
    if kind == "ours":
        return create_app(model), FAST_STACK
    if kind == "ours_no_metrics":
        return create_app(model, metrics=False), FAST_STACK
    if kind == "ours_access_log":
        return create_app(model, access_log=True), FAST_STACK
    if kind == "ours_instrumentator":
        return instrumentator_app(model), FAST_STACK
    if kind == "floor":
        return floor_app(model), FAST_STACK
    if kind == "floor_pure_python":
        return floor_app(model), PURE_PYTHON_STACK
    if kind == "straightforward":
        return straightforward_app(model), FAST_STACK
    raise ValueError(f"unknown kind of server {kind!r}")


def serve_one(kind: str, bucket: str, port: int) -> None:
    """Child process: load the newest model from the bucket and serve one of the apps."""
    configure_logger(logging.INFO)
    app, stack = build_server(kind, get_live_model(bucket))
    freeze_start_up_objects()
    run_server(app, open_port(LOCAL.loopback_host, port), stack)


# --- helpers ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCAL.loopback_host, 0))
        return int(sock.getsockname()[1])


def request_bodies(product_codes: Sequence[str]) -> List[Dict[str, Any]]:
    """50 requests: every product code at ten order counts over the usual range."""
    return [{"product_code": code, "orders_placed": float(orders)}
            for code in product_codes for orders in (0, 12, 35, 60, 73, 90, 112, 150, 210, 300)]


def post(conn: http.client.HTTPConnection, path: str, body: Any) -> Any:
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    if response.status != 200:
        raise RuntimeError(f"POST {path} answered {response.status}: {payload[:200]!r}")
    return json.loads(payload)


def wait_for_prediction(port: int, process: "subprocess.Popen[bytes]", body: Dict[str, Any]) -> Any:
    """Poll until the server answers a prediction; return the answer."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before answering")
        try:
            conn = http.client.HTTPConnection(LOCAL.loopback_host, port, timeout=5)
            try:
                return post(conn, API.predict_path, body)
            finally:
                conn.close()
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"no prediction from port {port} within {START_TIMEOUT}s")


def rss_mb(pid: int) -> float:
    return _proc_status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    return _proc_status_kb(pid, "VmHWM") / 1024


def _proc_status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def stop(process: "subprocess.Popen[Any]") -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class BenchmarkS3:
    """The local S3 server with a bucket holding a week of data and a model the real train stage made."""

    def __init__(self) -> None:
        from pipeline.local.local_s3 import LocalS3

        use_throwaway_signing_key()
        self.server = LocalS3().start()
        self.server.point_environment_here()
        self.env = {**os.environ, ENVIRONMENT.python_path: str(LOCAL.repo_root)}
        self.bucket = self.server.create_bucket("ttd-serve-benchmark")
        put_dataset(self.bucket, generate_orders(1000, seed=4), generate_weeks(1)[0].timestamp)
        subprocess.run([sys.executable, "-m", "pipeline.train_model", self.bucket, "0.9", "0.95"],
                       env=self.env, cwd=LOCAL.repo_root, check=True, stdout=subprocess.DEVNULL)
        self.model = get_live_model(self.bucket)

    def stop(self) -> None:
        self.server.stop()


# --- the measurements -------------------------------------------------------------------------

def start_server(kind: str, s3: BenchmarkS3) -> Server:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve", kind, "--bucket", s3.bucket, "--port", str(port)],
        env=s3.env, cwd=LOCAL.repo_root, stdout=subprocess.DEVNULL,
    )
    return Server(kind, process, port)


def run_wrk(port: int, script: Path, duration: float, connections: int) -> LoadResult:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "10s",
               "-s", str(script), f"http://{LOCAL.loopback_host}:{port}{API.predict_path}"]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    line = next(line for line in output.splitlines() if line.startswith("WRK_RESULT "))
    result = json.loads(line[len("WRK_RESULT "):])
    errors = {k: result[k] for k in ("non_2xx", "connect_errors", "read_errors", "write_errors", "timeouts")}
    if any(errors.values()):
        raise RuntimeError(f"wrk saw errors against port {port}: {errors}\n{output}")
    return LoadResult(
        requests_per_second=result["requests"] / (result["duration_us"] / 1e6),
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
    )


def compare_servers(s3: BenchmarkS3, duration: float, connections: int, rounds: int, warmup: float,
                    out: "Report") -> Dict[str, Any]:
    """Throughput and latency of the servers, taking turns; medians over rounds."""
    bodies = request_bodies(s3.model.product_codes)
    lua_bodies = "{" + ", ".join(json.dumps(json.dumps(b)) for b in bodies) + "}"
    kinds = measured_kinds()
    results: Dict[str, List[LoadResult]] = {kind: [] for kind in kinds}
    rss_after: Dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(WRK_SCRIPT.replace("{BODIES}", lua_bodies))
        servers = [start_server(kind, s3) for kind in kinds]
        try:
            for server in servers:
                answers = [wait_for_prediction(server.port, server.process, body) for body in bodies]
                if not server.kind.startswith("floor"):
                    expected = s3.model.predict([b["product_code"] for b in bodies],
                                                [b["orders_placed"] for b in bodies])
                    got = np.array([a["est_hours_to_dispatch"] for a in answers])
                    if not np.allclose(got, expected, rtol=0, atol=1e-9):
                        raise RuntimeError(f"{server.kind} answers differ from the estimator")
                run_wrk(server.port, script, warmup, connections)
            for round_ in range(rounds):
                for server in servers:
                    result = run_wrk(server.port, script, duration, connections)
                    results[server.kind].append(result)
                    out.print(f"  round {round_ + 1} {server.kind:<19} {result.requests_per_second:8.0f} req/s  "
                              f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms")
            rss_after = {server.kind: rss_mb(server.process.pid) for server in servers}
        finally:
            for server in servers:
                stop(server.process)
    summary: Dict[str, Any] = {}
    for kind in kinds:
        runs = results[kind]
        summary[kind] = {
            "requests_per_second": statistics.median(r.requests_per_second for r in runs),
            "p50_ms": statistics.median(r.p50_ms for r in runs),
            "p99_ms": statistics.median(r.p99_ms for r in runs),
            "rss_mb_after_load": round(rss_after[kind], 1),
            "runs": [r._asdict() for r in runs],
        }
    for kind in kinds:
        for base in ("floor", "floor_pure_python"):
            summary[kind][f"throughput_vs_{base}"] = (
                summary[kind]["requests_per_second"] / summary[base]["requests_per_second"])
            summary[kind][f"p99_vs_{base}"] = summary[kind]["p99_ms"] / summary[base]["p99_ms"]
    summary["ours_vs_straightforward_throughput"] = (
        summary["ours"]["requests_per_second"] / summary["straightforward"]["requests_per_second"])
    # Costs as the share of throughput lost: metrics (on vs off), the access log (on vs off,
    # metrics on both times), and the ready-made instrumentation instead of ours.
    summary["cost_of_metrics"] = 1 - (
        summary["ours"]["requests_per_second"] / summary["ours_no_metrics"]["requests_per_second"])
    summary["cost_of_access_log"] = 1 - (
        summary["ours_access_log"]["requests_per_second"] / summary["ours"]["requests_per_second"])
    if "ours_instrumentator" in summary:
        summary["cost_of_instrumentator"] = 1 - (
            summary["ours_instrumentator"]["requests_per_second"] / summary["ours_no_metrics"]["requests_per_second"])
    return summary


def measured_kinds() -> List[str]:
    return [kind for kind in KINDS if kind != "ours_instrumentator" or instrumentator_installed()]


def targets_met(load: Dict[str, Any]) -> Dict[str, bool]:
    """The speed targets for ours, with metrics on."""
    ours = load["ours"]
    return {
        f"throughput >= {TARGET_THROUGHPUT_VS_FLOOR}x the floor's (same stack)":
            ours["throughput_vs_floor"] >= TARGET_THROUGHPUT_VS_FLOOR,
        f"throughput >= {TARGET_THROUGHPUT_VS_PURE_PYTHON_FLOOR}x the pure-Python floor's":
            ours["throughput_vs_floor_pure_python"] >= TARGET_THROUGHPUT_VS_PURE_PYTHON_FLOOR,
        "p99 no worse than the pure-Python floor's":
            ours["p99_vs_floor_pure_python"] <= TARGET_P99_VS_PURE_PYTHON_FLOOR,
    }


def prediction_call_costs(model: Model) -> Dict[str, float]:
    """Microseconds per call of the ways to predict one row, in this process (best of 5): the
    estimator's `predict`, the tree walk (the model without its calibration), the calibration's
    binary search (`predict_one` of the calibrated model) and every field (`estimate_one`)."""
    features = np.array([[112.0, float(model.encoding.index("SKU001"))]])
    tree_only = copy.copy(model)
    tree_only.calibration = None
    tree_only.predict_one("SKU001", 112.0)
    calls = {
        "estimator_predict_1x2_us": lambda: model.estimator.predict(features),
        "tree_walk_us": lambda: tree_only.predict_one("SKU001", 112.0),
        "predict_one_us": lambda: model.predict_one("SKU001", 112.0),
        "estimate_one_us": lambda: model.estimate_one("SKU001", 112.0),
    }
    return {name: round(min(timeit.repeat(call, number=2000, repeat=5)) / 2000 * 1e6, 2)
            for name, call in calls.items()}


def asgi_request_costs(model: Model, calls: int = 2000, repeats: int = 5) -> Dict[str, float]:
    """CPU microseconds per single prediction request through each app, called in this process.

    The app is called as an ASGI server would call it, without a socket or an HTTP parser, so
    the figures isolate what the app and its middleware cost, and CPU time (not wall time) is
    far less disturbed by other programs on the machine than a load test. Best of `repeats`,
    the apps taking turns.
    """
    import asyncio

    apps = {"ours": create_app(model), "ours_no_metrics": create_app(model, metrics=False),
            "ours_access_log": create_app(model, access_log=True), "floor": floor_app(model)}
    if instrumentator_installed():
        apps["ours_instrumentator"] = instrumentator_app(model)
    logging.getLogger("pipeline.serve.metrics.access").disabled = True  # formatted, not written
    body = json.dumps({"product_code": model.product_codes[0], "orders_placed": 112.0}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": API.predict_path, "raw_path": API.predict_path.encode(), "root_path": "",
             "query_string": b"", "headers": headers,
             "client": (LOCAL.loopback_host, 50000), "server": (LOCAL.loopback_host, 8000)}

    async def receive() -> Dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"the app answered {message['status']}")

    async def drive(app: Any, n: int) -> float:
        started = time.process_time()
        for _ in range(n):
            await app(dict(scope), receive, send)
        return time.process_time() - started

    async def measure() -> Dict[str, float]:
        for app in apps.values():
            await drive(app, 200)
        best = {name: float("inf") for name in apps}
        for _ in range(repeats):
            for name, app in apps.items():
                best[name] = min(best[name], await drive(app, calls))
        return {f"{name}_us": round(seconds / calls * 1e6, 1) for name, seconds in best.items()}

    try:
        return asyncio.run(measure())
    finally:
        logging.getLogger("pipeline.serve.metrics.access").disabled = False


def cold_start_and_memory(s3: BenchmarkS3, starts: int, n_requests: int, n_batches: int) -> Dict[str, Any]:
    """Time the real CLI from process start to first prediction; its RSS after use."""
    bodies = request_bodies(s3.model.product_codes)
    seconds: List[float] = []
    memory: Dict[str, Any] = {}
    for attempt in range(starts):
        port = free_port()
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.serve_model", s3.bucket, "--host", LOCAL.loopback_host,
             "--port", str(port)],
            env=s3.env, cwd=LOCAL.repo_root, stdout=subprocess.DEVNULL,
        )
        try:
            wait_for_prediction(port, process, bodies[0])
            seconds.append(time.perf_counter() - started)
            if attempt == starts - 1:
                memory["rss_mb_after_start"] = rss_mb(process.pid)
                conn = http.client.HTTPConnection(LOCAL.loopback_host, port, timeout=10)
                for i in range(n_requests):
                    post(conn, API.predict_path, bodies[i % len(bodies)])
                memory[f"rss_mb_after_{n_requests}_requests"] = rss_mb(process.pid)
                batch = [bodies[i % len(bodies)] for i in range(1000)]
                for _ in range(n_batches):
                    post(conn, API.predict_batch_path, batch)
                conn.close()
                memory[f"rss_mb_after_{n_batches}_more_batches_of_1000"] = rss_mb(process.pid)
                memory["peak_rss_mb"] = peak_rss_mb(process.pid)
        finally:
            stop(process)
    return {
        "cold_start_seconds_runs": [round(s, 3) for s in seconds],
        "cold_start_seconds_median": round(statistics.median(seconds), 3),
        **{k: round(v, 1) for k, v in memory.items()},
    }


class Report:
    """Prints and keeps the lines, for the text file."""

    def __init__(self) -> None:
        self.lines: List[str] = []

    def print(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)


def benchmark(args: argparse.Namespace, command: str) -> Dict[str, Any]:
    out = Report()
    out.print(f"$ {command}")
    out.print(f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, "
              f"{subprocess.run(['wrk', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}")
    load_average_at_start = os.getloadavg()
    out.print(f"load average at start (1, 5, 15 min): {load_average_at_start}")
    s3 = BenchmarkS3()
    try:
        out.print(f"model: {s3.model}")
        out.print(f"\nthroughput and latency: wrk -t1 -c{args.connections} -d{args.duration:g}s, "
                  f"{args.rounds} rounds, servers taking turns (after a {args.warmup:g}s warm-up each)")
        load = compare_servers(s3, args.duration, args.connections, args.rounds, args.warmup, out)
        out.print("")
        out.print(f"{'endpoint':<19} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'req/s vs floor':>15} "
                  f"{'vs pure-Python floor':>21} {'p99 vs floor':>13} {'RSS MB':>7}")
        for kind in measured_kinds():
            row = load[kind]
            out.print(f"{kind:<19} {row['requests_per_second']:8.0f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} "
                      f"{row['throughput_vs_floor']:15.2f} {row['throughput_vs_floor_pure_python']:21.2f} "
                      f"{row['p99_vs_floor']:13.2f} {row['rss_mb_after_load']:7.1f}")
        out.print(f"ours vs straightforward: {load['ours_vs_straightforward_throughput']:.2f}x the throughput")
        out.print(f"cost of the metrics (ours vs ours_no_metrics): {load['cost_of_metrics']:.1%} of throughput; "
                  f"of the access log: {load['cost_of_access_log']:.1%}"
                  + (f"; of prometheus-fastapi-instrumentator instead: {load['cost_of_instrumentator']:.1%}"
                     if "cost_of_instrumentator" in load else ""))
        met = targets_met(load)
        for target, ok in met.items():
            out.print(f"target for ours (metrics on): {target}: {'met' if ok else 'NOT met'}")
        costs = prediction_call_costs(s3.model)
        out.print(f"per call, in-process: estimator.predict on a 1x2 array {costs['estimator_predict_1x2_us']} us, "
                  f"the tree walk {costs['tree_walk_us']} us, Model.predict_one (calibrated: a binary search) "
                  f"{costs['predict_one_us']} us, Model.estimate_one (every field) {costs['estimate_one_us']} us")
        asgi_costs = asgi_request_costs(s3.model)
        out.print("CPU per single prediction request through the app alone (ASGI calls in-process, best of 5 x 2000): "
                  + ", ".join(f"{name[:-3]} {us} us" for name, us in asgi_costs.items()))
        out.print(f"\ncold start (python -m pipeline.serve_model, start to first prediction, {args.cold_starts} runs) "
                  f"and memory after {args.requests:,} requests, then {args.batches} batches of 1,000")
        service = cold_start_and_memory(s3, args.cold_starts, args.requests, args.batches)
        for key, value in service.items():
            out.print(f"  {key}: {value}")
    finally:
        s3.stop()
    out.print(f"load average at end (1, 5, 15 min): {os.getloadavg()}")
    results = {
        "command": command,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_start": load_average_at_start, "load_average_at_end": os.getloadavg()},
        "load": {"connections": args.connections, "duration_seconds": args.duration, "rounds": args.rounds,
                 **load, "targets_met": met},
        "prediction_call_costs": costs,
        "asgi_request_cpu_us": asgi_costs,
        # The figures the deployment's resources are sized from: the slowest cold start seen and
        # the memory after 10,000 requests.
        "cold_start_seconds": max(service["cold_start_seconds_runs"]),
        "rss_mb_after_10000_requests": service.get("rss_mb_after_10000_requests"),
        "service": service,
    }
    if args.text:
        Path(args.text).write_text("\n".join(out.lines) + "\n")
    return results


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--rounds", type=int, default=5, help="wrk runs per server (default 5)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring (default 2)")
    parser.add_argument("--cold-starts", type=int, default=3, help="CLI starts timed (default 3)")
    parser.add_argument("--requests", type=int, default=10000, help="requests before reading RSS (default 10000)")
    parser.add_argument("--batches", type=int, default=100, help="batches of 1,000 after that (default 100)")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--text", help="write the printed report to this file")
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--bucket", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(list(argv))


def _main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if args.serve:
        serve_one(args.serve, args.bucket, args.port)
        return 0
    if shutil.which("wrk") is None:
        print(WRK_INSTALL_HINT, file=sys.stderr)
        return 2
    configure_logger(logging.WARNING)
    command = "PYTHONPATH=. python benchmarks/serve_benchmark.py " + " ".join(shlex.quote(a) for a in argv)
    results = benchmark(args, command.strip())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
