"""The serve stage's real CLI in a subprocess, against the local S3 server over HTTP; and the
same command line in-process (`serve_model.CLI.main`, which returns the exit code) where the
service never gets to serve.

Each service listens on 127.0.0.1 on a port that was free a moment before. "The port never
opened" is checked by trying to connect all the time the process runs.
"""
import http.client
import json
import signal
import socket
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from pipeline import serve_model
from pipeline.artefact.model import Model
from pipeline.model_registry.live_model import get_live_model
from pipeline.serve import start_up
from pipeline.settings import API, ENVIRONMENT, LAYOUT, LOCAL
from pipeline.storage.layout import latest_object
from pipeline.storage.signed_artefacts import put_model
from tests.helpers import (
    LOG_LINE,
    START_TIMEOUT,
    Service,
    StartService,
    error_lines,
    free_port,
    parse_metrics,
    port_accepts,
    run_cli,
    stop_service,
    the_error_of_a_failed_start,
    wait_for_log,
    wait_until_listening,
)

pytestmark = pytest.mark.e2e

EXAMPLE_REQUEST = {"product_code": "SKU001", "orders_placed": 112}


def start_listening(start: StartService, args: List[str], env: Dict[str, str], cwd: Optional[Path] = None) -> Service:
    """Start the service and return once it accepts connections."""
    service = start(args, env, cwd)
    wait_until_listening(service)
    return service


def post(port: int, path: str, body: Any) -> Tuple[int, Any]:
    conn = http.client.HTTPConnection(LOCAL.loopback_host, port, timeout=10)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def get(port: int, path: str) -> Tuple[int, Any]:
    conn = http.client.HTTPConnection(LOCAL.loopback_host, port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def expected_estimate(model: Model, product_code: str, orders_placed: float) -> float:
    """The served estimate: the calibration's value after the last breakpoint below the point."""
    assert model.calibration is not None
    steps = model.calibration.per_product[product_code]
    return steps.values[sum(1 for threshold in steps.thresholds if threshold < orders_placed)]


def expected_answer(model: Model, product_code: str, orders_placed: float) -> Dict[str, Any]:
    """Every field of the prediction the service answers."""
    estimate = expected_estimate(model, product_code, orders_placed)
    assert model.upper_bound is not None and model.trained_ranges is not None
    trained = model.trained_ranges[product_code]
    return {"est_hours_to_dispatch": pytest.approx(estimate, abs=1e-9), "model_version": str(model),
            "upper_hours_to_dispatch": pytest.approx(estimate + model.upper_bound.margin_hours, abs=1e-9),
            "extrapolated": not trained.lowest <= orders_placed <= trained.highest}


# --- serving ------------------------------------------------------------------------------------

def test_module_cli_serves_the_newest_model(
    s3_env: Dict[str, str], bucket_with_model: str, start: StartService
) -> None:
    model = get_live_model(bucket_with_model)
    service = start_listening(start, ["-m", "pipeline.serve_model", bucket_with_model], s3_env)

    status, body = post(service.port, API.predict_path, EXAMPLE_REQUEST)

    assert status == 200
    assert body == expected_answer(model, "SKU001", 112)
    assert get(service.port, API.ready_path) == (200, {"status": "ready", "model_version": str(model)})
    assert stop_service(service) == 0


def test_script_run_as_bodywork_runs_it_serves_the_newest_model(
    s3_env: Dict[str, str], bucket_with_model: str, start: StartService
) -> None:
    model = get_live_model(bucket_with_model)
    service = start_listening(start, ["serve_model.py", bucket_with_model], s3_env, cwd=LOCAL.repo_root / "pipeline")

    status, body = post(service.port, API.predict_path, {"product_code": "SKU005", "orders_placed": 250})

    assert (status, body["model_version"]) == (200, str(model))
    assert body["est_hours_to_dispatch"] == pytest.approx(expected_estimate(model, "SKU005", 250), abs=1e-9)
    assert stop_service(service) == 0


def test_every_log_line_is_in_the_project_format_on_stdout_including_uvicorns(
    s3_env: Dict[str, str], bucket_with_model: str, start: StartService
) -> None:
    service = start_listening(start, ["-m", "pipeline.serve_model", bucket_with_model, "--access-log"], s3_env)
    post(service.port, API.predict_path, EXAMPLE_REQUEST)
    stop_service(service)

    lines = service.log().splitlines()
    assert [line for line in lines if not LOG_LINE.match(line)] == []
    assert any(" - server._serve - Started server process" in line for line in lines)
    path = API.predict_path
    assert any(f'"POST {path} HTTP/1.1" 200 route={path} duration_ms=' in line for line in lines)


def test_requests_are_not_logged_by_default(
    s3_env: Dict[str, str], bucket_with_model: str, start: StartService
) -> None:
    service = start_listening(start, ["-m", "pipeline.serve_model", bucket_with_model], s3_env)
    post(service.port, API.predict_path, EXAMPLE_REQUEST)
    stop_service(service)

    assert API.predict_path not in service.log()
    assert "serving model time-to-dispatch:" in service.log()


def get_text(port: int, path: str) -> Tuple[int, str]:
    conn = http.client.HTTPConnection(LOCAL.loopback_host, port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_metrics_count_what_the_cli_was_sent(
    s3_env: Dict[str, str], bucket_with_model: str, start: StartService
) -> None:
    service = start_listening(start, ["-m", "pipeline.serve_model", bucket_with_model], s3_env)
    for orders in (1, 50, 300):
        assert post(service.port, API.predict_path, {"product_code": "SKU003", "orders_placed": orders})[0] == 200
    assert post(service.port, API.predict_path, {"product_code": "SKU003"})[0] == 422
    assert post(service.port, API.predict_path, {"product_code": "SKU003", "orders_placed": -1})[0] == 422
    assert post(service.port, API.predict_batch_path, [{"product_code": "SKU003", "orders_placed": 7}] * 5)[0] == 200

    status, text = get_text(service.port, API.metrics_path)
    stop_service(service)

    metrics = parse_metrics(text)
    assert status == 200
    assert metrics.value("time_to_dispatch_http_requests_total", route=API.predict_path, method="POST",
                         status="200") == 3
    assert metrics.value("time_to_dispatch_http_requests_total", route=API.predict_path, method="POST",
                         status="422") == 2
    assert metrics.value("time_to_dispatch_predictions_total", product_code="SKU003") == 8
    assert metrics.value("time_to_dispatch_model_info", **metrics.series("time_to_dispatch_model_info")[0][0]) == 1
    assert metrics.series("time_to_dispatch_model_info")[0][0]["artefact_id"] == (
        get_live_model(bucket_with_model).artefact_id)


def test_the_cli_serves_on_uvloop_and_httptools(
    s3_env: Dict[str, str], bucket_with_model: str, start: StartService
) -> None:
    service = start_listening(start, ["-m", "pipeline.serve_model", bucket_with_model], s3_env)
    status, _ = post(service.port, API.predict_path, EXAMPLE_REQUEST)
    stop_service(service)

    assert status == 200
    assert " - INFO - lifecycle.run_server - server stack: uvloop event loop, httptools HTTP parser" in service.log()


def test_the_cli_falls_back_to_asyncio_and_h11_where_uvloop_and_httptools_are_missing(
    s3_env: Dict[str, str], bucket_with_model: str, start: StartService, tmp_path: Path
) -> None:
    # Packages of these names first on the path, failing to import as a missing extension does.
    for module in ("uvloop", "httptools"):
        (tmp_path / "missing" / module).mkdir(parents=True)
        (tmp_path / "missing" / module / "__init__.py").write_text(f"raise ImportError('no {module} here')\n")
    env = {**s3_env, ENVIRONMENT.python_path: f"{tmp_path / 'missing'}:{s3_env[ENVIRONMENT.python_path]}"}

    service = start_listening(start, ["-m", "pipeline.serve_model", bucket_with_model], env)
    status, body = post(service.port, API.predict_path, EXAMPLE_REQUEST)
    assert stop_service(service) == 0

    assert (status, sorted(body)) == (200, ["est_hours_to_dispatch", "extrapolated", "model_version",
                                            "upper_hours_to_dispatch"])
    log = service.log()
    assert " - WARNING - lifecycle.run_server - uvloop event loop, httptools HTTP parser asked for, but not all " \
           "installed: falling back to the asyncio event loop, h11 HTTP parser" in log
    assert " - INFO - lifecycle.run_server - server stack: asyncio event loop, h11 HTTP parser" in log


def test_the_pure_python_stack_can_be_asked_for(
    s3_env: Dict[str, str], bucket_with_model: str, start: StartService
) -> None:
    service = start_listening(
        start, ["-m", "pipeline.serve_model", bucket_with_model, "--server-stack", "pure-python"], s3_env)
    status, _ = post(service.port, API.predict_path, EXAMPLE_REQUEST)
    stop_service(service)

    assert status == 200
    assert "server stack: asyncio event loop, h11 HTTP parser" in service.log()
    assert "falling back" not in service.log()


def test_sigterm_as_soon_as_the_port_opens_exits_0_without_a_traceback(
    s3_env: Dict[str, str], bucket_with_model: str, start: StartService
) -> None:
    # Kubernetes may stop a pod the moment it is ready: the port opens before uvicorn has
    # finished starting, and a stop then must be as clean as any other.
    service = start_listening(start, ["-m", "pipeline.serve_model", bucket_with_model], s3_env)

    assert stop_service(service) == 0
    lines = service.log().splitlines()
    assert [line for line in lines if not LOG_LINE.match(line)] == []
    assert error_lines(service.log()) == []
    assert "stopped by SIGTERM" in service.log()


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(
    s3_env: Dict[str, str], bucket_with_model: str, start: StartService
) -> None:
    model = get_live_model(bucket_with_model)
    service = start_listening(start, ["-m", "pipeline.serve_model", bucket_with_model], s3_env)
    body = json.dumps({"product_code": "SKU002", "orders_placed": 140}).encode()
    head = (f"POST {API.predict_path} HTTP/1.1\r\nHost: {LOCAL.loopback_host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()

    with socket.create_connection((LOCAL.loopback_host, service.port), timeout=10) as conn:
        conn.sendall(head + body[:10])
        time.sleep(0.5)  # let the service read the headers: the request is now in flight
        service.process.send_signal(signal.SIGTERM)
        wait_for_log(service, "Shutting down")
        refused_during_shutdown = not port_accepts(service.port)
        conn.sendall(body[10:])
        response = conn.makefile("rb").read()  # the service closes the connection after answering

    status_line, _, rest = response.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK"
    answer = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert answer == expected_answer(model, "SKU002", 140)
    assert refused_during_shutdown
    assert service.process.wait(timeout=30) == 0
    assert not port_accepts(service.port)
    assert "stopped by SIGTERM after a graceful shutdown" in service.log()


def sigterm_into_a_drain(start: StartService, env: Dict[str, str], bucket: str, seconds: int) -> Service:
    """A service started with `--drain-seconds SECONDS`, sent SIGTERM once it serves, and
    now in its drain period."""
    service = start_listening(start, ["-m", "pipeline.serve_model", bucket, "--drain-seconds", str(seconds)], env)
    wait_for_log(service, "Started server process")
    service.process.send_signal(signal.SIGTERM)
    wait_for_log(service, f"SIGTERM: serving on for {seconds} s")
    return service


def test_sigterm_with_a_drain_period_serves_new_connections_for_it_then_exits_0(
    s3_env: Dict[str, str], bucket_with_model: str, start: StartService
) -> None:
    service = sigterm_into_a_drain(start, s3_env, bucket_with_model, 3)

    status_while_draining, _ = post(service.port, API.predict_path, {"product_code": "SKU002", "orders_placed": 140})
    still_running_while_draining = service.process.poll() is None

    assert status_while_draining == 200
    assert still_running_while_draining
    assert service.process.wait(timeout=30) == 0
    assert not port_accepts(service.port)
    log = service.log()
    assert log.index("SIGTERM: serving on for 3 s") < log.index("Shutting down")
    assert "stopped by SIGTERM after a graceful shutdown" in log


def test_a_second_sigterm_ends_the_drain_period_at_once(
    s3_env: Dict[str, str], bucket_with_model: str, start: StartService
) -> None:
    service = sigterm_into_a_drain(start, s3_env, bucket_with_model, 8)

    service.process.send_signal(signal.SIGTERM)

    assert service.process.wait(timeout=6) == 0
    assert "stopped by SIGTERM after a graceful shutdown" in service.log()


def test_sigterm_while_loading_the_model_stops_at_once_with_exit_0(
    s3_env: Dict[str, str], bucket_with_model: str, start: StartService
) -> None:
    # A server that accepts connections and never answers: the service is stuck loading.
    with socket.create_server((LOCAL.loopback_host, 0)) as silent:
        env = {**s3_env, ENVIRONMENT.aws_endpoint_url: f"http://{LOCAL.loopback_host}:{silent.getsockname()[1]}"}
        service = start(["-m", "pipeline.serve_model", bucket_with_model], env)
        silent.settimeout(START_TIMEOUT)
        connection, _ = silent.accept()  # the service's first S3 request: it is past start-up's imports
        with connection:
            service.process.send_signal(signal.SIGTERM)
            exit_code = service.process.wait(timeout=10)

    assert exit_code == 0
    assert "stopped by SIGTERM before the service started serving" in service.log()
    assert not port_accepts(service.port)


# --- failing to start: one ERROR line, exit 1, port never opened -------------------------------

def test_empty_models_folder_exits_1_without_opening_the_port(
    s3_env: Dict[str, str], bucket_with_datasets: str, start: StartService
) -> None:
    line = the_error_of_a_failed_start(bucket_with_datasets, s3_env, start)

    assert f"serve_model failed: s3://{bucket_with_datasets}/models/: no .pkl object with a timestamp" in line


def test_tampered_artefact_exits_1_without_opening_the_port(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str, start: StartService
) -> None:
    key = latest_object(bucket_with_model, LAYOUT.models_prefix, ".pkl", s3).key
    stored = s3.get_object(Bucket=bucket_with_model, Key=key)
    body = bytearray(stored["Body"].read())
    body[len(body) // 2] ^= 0xFF
    s3.put_object(Bucket=bucket_with_model, Key=key, Body=bytes(body), Metadata=stored["Metadata"])
    line = the_error_of_a_failed_start(bucket_with_model, s3_env, start)

    assert f"serve_model failed: s3://{bucket_with_model}/{key}: SHA-256 of the artefact is " in line
    assert "the artefact was altered or corrupted, refusing to load it" in line


def test_artefact_from_another_scikit_learn_version_exits_1_without_opening_the_port(
    s3: Any, s3_env: Dict[str, str], bucket_with_datasets: str, trained_model: Model,
    start: StartService
) -> None:
    trained_model.library_versions["scikit-learn"] = "1.5.2"
    key = put_model(bucket_with_datasets, trained_model, s3)
    line = the_error_of_a_failed_start(bucket_with_datasets, s3_env, start)

    assert f"serve_model failed: model artefact {key} was trained with scikit-learn 1.5.2, but" in line


def test_missing_bucket_exits_1_without_opening_the_port(
    s3_env: Dict[str, str], start: StartService
) -> None:
    line = the_error_of_a_failed_start("ttd-no-such-bucket", s3_env, start)

    assert "serve_model failed: s3://ttd-no-such-bucket: bucket does not exist" in line


def test_port_in_use_exits_1_with_one_error_line(s3_env: Dict[str, str], bucket_with_model: str) -> None:
    with socket.socket() as taken:
        taken.bind((LOCAL.loopback_host, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(["-m", "pipeline.serve_model", bucket_with_model, "--host", LOCAL.loopback_host,
                          "--port", str(port)], s3_env, timeout=START_TIMEOUT)

    assert result.returncode == 1
    [line] = error_lines(result.stdout)
    assert f"serve_model failed: cannot listen on {LOCAL.loopback_host}:{port}: " in line
    assert "Address already in use" in line


# --- arguments ------------------------------------------------------------------------------------

USAGE_TEXT = ("usage: python -m pipeline.serve_model S3_BUCKET [--host HOST] [--port PORT] [--access-log] "
              "[--server-stack {auto,pure-python}] [--drain-seconds SECONDS]")


def test_module_cli_without_arguments_exits_1_with_the_reason_and_usage(s3_env: Dict[str, str]) -> None:
    result = run_cli(["-m", "pipeline.serve_model"], s3_env)

    assert result.returncode == 1
    [line] = error_lines(result.stdout)
    assert LOG_LINE.match(line)
    assert line.endswith("Invalid arguments passed to serve_model.py: the following arguments are required: "
                         f"bucket; {USAGE_TEXT}")


def test_script_with_a_bad_port_exits_1_with_the_reason_and_usage(s3_env: Dict[str, str]) -> None:
    result = run_cli(["serve_model.py", "bucket-a", "--port", "70000"], s3_env, cwd=LOCAL.repo_root / "pipeline")

    assert result.returncode == 1
    [line] = error_lines(result.stdout)
    assert line.endswith(f"Invalid arguments passed to serve_model.py: --port must be in 1..65535, got 70000; "
                         f"{USAGE_TEXT}")


# --- the same command line, in-process: it never gets to serve -----------------------------

@pytest.fixture
def stop_signal_handlers() -> Iterator[None]:
    """SIGINT's and SIGTERM's handlers put back after the test: the serve stage installs its own
    as it starts."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_main_in_process_with_an_empty_models_folder_returns_1_with_the_one_error_line(
    s3_env: Dict[str, str], bucket_with_datasets: str, cli_output: Callable[[], List[str]],
    stop_signal_handlers: None,
) -> None:
    port = free_port()

    assert serve_model.CLI.main([bucket_with_datasets, "--host", LOCAL.loopback_host, "--port", str(port)]) == 1

    [line] = error_lines("\n".join(cli_output()))
    assert f" - serve_model failed: s3://{bucket_with_datasets}/models/: no .pkl object with a timestamp" in line
    assert not port_accepts(port)


def test_main_in_process_stopped_while_loading_the_model_returns_0_with_one_info_line(
    s3_env: Dict[str, str], bucket_with_model: str, cli_output: Callable[[], List[str]],
    stop_signal_handlers: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # SIGTERM arrives while the model loads: the handler the stage installed raises the stop.
    def load_model_and_get_stopped(bucket: str) -> Model:
        signal.raise_signal(signal.SIGTERM)
        raise AssertionError("the stop did not end the start-up")

    monkeypatch.setattr(start_up, "load_model", load_model_and_get_stopped)

    assert serve_model.CLI.main([bucket_with_model, "--host", LOCAL.loopback_host, "--port", str(free_port())]) == 0

    lines = cli_output()
    assert error_lines("\n".join(lines)) == []
    assert [line.split(" - ", 3)[1:] for line in lines] == [[
        "INFO", "test_serve_model.test_main_in_process_stopped_while_loading_the_model_returns_0_with_one_info_line",
        "stopped by SIGTERM before the service started serving"]]
