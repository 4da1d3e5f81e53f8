"""The local run: one command runs the whole pipeline on an embedded S3 and stops cleanly.

The end-to-end tests run `python -m pipeline.run_local --in-place` in a subprocess with the
test's own interpreter (which has the requirements), so no virtualenv is created; the
virtualenv logic is tested on its own, without creating one.
"""
import io
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional

import pytest

from pipeline import run_local
from pipeline.local import run as local_run
from pipeline.local.processes import port_is_free
from pipeline.local.synthetic import generate_weeks
from pipeline.settings import API, ENVIRONMENT, LAYOUT, LOCAL, STREAM
from pipeline.storage.layout import dataset_key
from pipeline.utils import LOG_FORMAT
from tests.helpers import LOG_LINE, free_port, logged_json
RUN_TIMEOUT_SECONDS = 240


class LocalRun(NamedTuple):
    """A finished local run: its exit code, output lines and the port its service used."""

    returncode: int
    lines: List[str]
    port: int


def local_run_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment without any AWS settings of the developer's, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env[ENVIRONMENT.python_path] = str(LOCAL.repo_root)
    env.update(extra or {})
    return env


def run_to_completion(args: List[str], env: Dict[str, str]) -> LocalRun:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.run_local", "--in-place", "--port", str(port), *args],
        cwd=LOCAL.repo_root, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS,
    )
    return LocalRun(result.returncode, (result.stdout + result.stderr).splitlines(), port)


def stage_pids(lines: List[str]) -> List[int]:
    return [int(m.group(1)) for line in lines for m in [re.search(r"stage started \(pid (\d+)\)", line)] if m]


def stage_still_running(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"pipeline.serve_model" in cmdline or b"pipeline.train_model" in cmdline


def newest_synthetic_key() -> str:
    return dataset_key(generate_weeks(LOCAL.default_weeks)[-1].timestamp)


@pytest.fixture(scope="module")
def finished_run() -> LocalRun:
    """One local run on the embedded S3 that stops after the example request."""
    return run_to_completion(["--exit-after-request"], local_run_env())


# --- end to end: embedded S3, --exit-after-request ------------------------------------------


@pytest.mark.e2e
def test_local_run_exits_0_after_the_example_request(finished_run: LocalRun) -> None:
    assert finished_run.returncode == 0, "\n".join(finished_run.lines)


@pytest.mark.e2e
def test_local_run_prints_the_estimate_for_the_example_request(finished_run: LocalRun) -> None:
    response = logged_json(finished_run.lines, "response: ")
    lineage = logged_json(finished_run.lines, f"model lineage (GET {API.model_path}): ")
    # SKU001 takes about 0.075 hours per order: about 8.4 hours at 112 orders, noise sd 1 hour.
    assert 5.0 < response["est_hours_to_dispatch"] < 12.0
    assert response["model_version"] == lineage["model_version"]


@pytest.mark.e2e
def test_local_run_trains_on_the_newest_synthetic_week(finished_run: LocalRun) -> None:
    key = newest_synthetic_key()
    lineage = logged_json(finished_run.lines, f"model lineage (GET {API.model_path}): ")
    assert lineage["dataset"]["key"] == key
    assert any(f"the train stage will pick the newest dataset: s3://{LOCAL.bucket}/{key}" in line
               for line in finished_run.lines)


@pytest.mark.e2e
def test_local_run_prints_the_train_stages_metrics(finished_run: LocalRun) -> None:
    metrics = logged_json(finished_run.lines, f"model lineage (GET {API.model_path}): ")["metrics"]
    assert metrics["r_squared"] >= LOCAL.r2_error_threshold
    expected = f"test metrics: r²={metrics['r_squared']:.4f}, MAE={metrics['mean_absolute_error']:.4f} hours"
    assert any(expected in line for line in finished_run.lines)


@pytest.mark.e2e
def test_local_run_prints_where_the_model_went(finished_run: LocalRun) -> None:
    lineage = logged_json(finished_run.lines, f"model lineage (GET {API.model_path}): ")
    assert lineage["artefact_key"].startswith(LAYOUT.models_prefix)
    assert any(f"the model artefact is at s3://{LOCAL.bucket}/{lineage['artefact_key']}" in line
               for line in finished_run.lines)


@pytest.mark.e2e
def test_local_run_prints_where_the_model_report_is(finished_run: LocalRun) -> None:
    lineage = logged_json(finished_run.lines, f"model lineage (GET {API.model_path}): ")
    assert lineage["report_key"].startswith(LAYOUT.reports_prefix)
    assert any(f"the model report is at s3://{LOCAL.bucket}/{lineage['report_key']}" in line
               for line in finished_run.lines)
    assert any(line.endswith(f"model report: http://{LOCAL.loopback_host}:{finished_run.port}{API.model_report_path}")
               for line in finished_run.lines)


@pytest.mark.e2e
def test_local_run_prints_the_api_docs_url(finished_run: LocalRun) -> None:
    assert any(line.endswith(f"API docs: http://{LOCAL.loopback_host}:{finished_run.port}{API.docs_path}")
               for line in finished_run.lines)


@pytest.mark.e2e
def test_local_run_output_is_all_in_the_project_log_format(finished_run: LocalRun) -> None:
    assert LOG_FORMAT == "%(asctime)s - %(levelname)s - %(module)s.%(funcName)s - %(message)s"
    assert finished_run.lines
    assert [line for line in finished_run.lines if not LOG_LINE.match(line)] == []


@pytest.mark.e2e
def test_local_run_leaves_its_port_free(finished_run: LocalRun) -> None:
    assert port_is_free(LOCAL.loopback_host, finished_run.port)


@pytest.mark.e2e
def test_local_run_leaves_no_stage_process_running(finished_run: LocalRun) -> None:
    pids = stage_pids(finished_run.lines)
    assert len(pids) == 2  # the train stage, then the serve stage
    assert [pid for pid in pids if stage_still_running(pid)] == []


# --- end to end: Ctrl-C -----------------------------------------------------------------------


def _read_lines(stream: Any, lines: "queue.Queue[Optional[str]]") -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


# The SIGINT disposition the local run starts with: the default, and ignored, as a run
# started with `cmd &` from a script, under nohup or by some CI runners inherits it. Each is set
# explicitly in the child, so the test does not depend on how the test run itself was started.
INHERITED_SIGINT = {"default": signal.SIG_DFL, "ignored": signal.SIG_IGN}


@pytest.fixture(params=sorted(INHERITED_SIGINT))
def serving_run(request: pytest.FixtureRequest) -> Iterator["subprocess.Popen[str]"]:
    """A local run that keeps serving; killed at the end if a test left it running."""
    disposition = INHERITED_SIGINT[request.param]
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.run_local", "--in-place", "--port", str(free_port())],
        cwd=LOCAL.repo_root, env=local_run_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, disposition),
    )
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.mark.e2e
@pytest.mark.parametrize("stop_signal, repeated", [(signal.SIGINT, False), (signal.SIGTERM, True)],
                         ids=["SIGINT", "SIGTERM again and again"])
def test_a_stop_signal_while_serving_stops_everything_and_exits_0(
    serving_run: "subprocess.Popen[str]", stop_signal: signal.Signals, repeated: bool
) -> None:
    lines: "queue.Queue[Optional[str]]" = queue.Queue()
    threading.Thread(target=_read_lines, args=(serving_run.stdout, lines), daemon=True).start()
    seen: List[str] = []
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while not any("until Ctrl-C" in line for line in seen):
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        assert line is not None, "the local run ended before serving:\n" + "\n".join(seen)
        seen.append(line)
    serving = re.search(r"serving on http://127\.0\.0\.1:(\d+)", seen[-1])
    assert serving is not None, seen[-1]
    port = int(serving.group(1))
    assert not port_is_free(LOCAL.loopback_host, port)

    serving_run.send_signal(stop_signal)
    # More of the same while it stops (Ctrl-C pressed again, or `timeout` passing on a SIGTERM the
    # process got already): none may cut its clean-up short.
    deadline = time.monotonic() + 10
    while repeated and serving_run.poll() is None and time.monotonic() < deadline:
        serving_run.send_signal(stop_signal)
        time.sleep(0.002)

    assert serving_run.wait(timeout=60) == 0
    while (line := lines.get(timeout=10)) is not None:
        seen.append(line)
    assert port_is_free(LOCAL.loopback_host, port)
    assert [pid for pid in stage_pids(seen) if stage_still_running(pid)] == []


# --- end to end: an existing bucket ----------------------------------------------------------


def _dataset_keys(client: Any, bucket: str) -> List[str]:
    listing = client.list_objects_v2(Bucket=bucket, Prefix=LAYOUT.datasets_prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


@pytest.mark.e2e
def test_existing_bucket_is_used_as_it_is_without_synthetic_data(
    s3: Any, s3_endpoint: str, bucket_with_datasets: str
) -> None:
    datasets_before = _dataset_keys(s3, bucket_with_datasets)
    env = local_run_env({ENVIRONMENT.aws_access_key_id: "testing", ENVIRONMENT.aws_secret_access_key: "testing",
                         ENVIRONMENT.aws_default_region: LOCAL.region})

    run = run_to_completion(
        ["--exit-after-request", "--bucket", bucket_with_datasets, "--endpoint-url", s3_endpoint], env
    )

    assert run.returncode == 0, "\n".join(run.lines)
    assert _dataset_keys(s3, bucket_with_datasets) == datasets_before
    lineage = logged_json(run.lines, f"model lineage (GET {API.model_path}): ")
    assert lineage["dataset"]["bucket"] == bucket_with_datasets
    assert lineage["dataset"]["key"] == datasets_before[-1]
    assert not any("embedded S3 at" in line for line in run.lines)


@pytest.mark.e2e
def test_with_batch_scores_a_synthetic_orders_file_and_prints_where_the_output_is(
    s3: Any, s3_endpoint: str, bucket_with_datasets: str
) -> None:
    env = local_run_env({ENVIRONMENT.aws_access_key_id: "testing", ENVIRONMENT.aws_secret_access_key: "testing",
                         ENVIRONMENT.aws_default_region: LOCAL.region})

    run = run_to_completion(["--exit-after-request", "--with-batch", "--bucket", bucket_with_datasets,
                             "--endpoint-url", s3_endpoint], env)

    assert run.returncode == 0, "\n".join(run.lines)
    output = f"s3://{bucket_with_datasets}/{LOCAL.batch_output_key}"
    rejects_uri = f"{output}{LAYOUT.rejects_suffix}"
    assert any(f"batch scoring output: {output} (rejects: {rejects_uri})" in line for line in run.lines)
    scored = s3.get_object(Bucket=bucket_with_datasets, Key=LOCAL.batch_output_key)["Body"].read().decode()
    rejects = s3.get_object(Bucket=bucket_with_datasets, Key=LOCAL.batch_output_key + LAYOUT.rejects_suffix)
    assert scored.splitlines()[0] == \
        "order_id,orders_placed,product_code,est_hours_to_dispatch,upper_hours_to_dispatch,extrapolated"
    assert len(scored.splitlines()) == 1 + 10_000
    assert len(rejects["Body"].read().decode().splitlines()) == 1 + 3


@pytest.mark.e2e
def test_with_mlflow_starts_a_tracking_server_prints_its_ui_and_logs_the_training_there(
    s3: Any, s3_endpoint: str, bucket_with_datasets: str
) -> None:
    from mlflow import MlflowClient

    env = local_run_env({ENVIRONMENT.aws_access_key_id: "testing", ENVIRONMENT.aws_secret_access_key: "testing",
                         ENVIRONMENT.aws_default_region: LOCAL.region})
    env.pop(ENVIRONMENT.mlflow_tracking_uri, None)

    run = run_to_completion(["--exit-after-request", "--with-mlflow", "--bucket", bucket_with_datasets,
                             "--endpoint-url", s3_endpoint], env)

    assert run.returncode == 0, "\n".join(run.lines)
    assert [line for line in run.lines if not LOG_LINE.match(line)] == []
    [ui] = {m.group(1) for line in run.lines for m in [re.search(r"MLflow UI: (http://127\.0\.0\.1:\d+)", line)] if m}
    assert any("the MLflow server stopped" in line for line in run.lines)
    # The server has stopped with the run; what it stored is read back with MLflow's own client.
    store = MlflowClient(tracking_uri=f"sqlite:///{LOCAL.repo_root / LOCAL.mlflow_folder_name}/mlflow.db")
    experiment = store.get_experiment_by_name(bucket_with_datasets)
    assert experiment is not None, ui
    [tracked] = store.search_runs([experiment.experiment_id])
    assert tracked.info.status == "FINISHED"
    model_key = tracked.data.tags["artefact_uri"].split("/", 3)[3]
    assert s3.head_object(Bucket=bucket_with_datasets, Key=model_key)["ContentLength"] > 0


@pytest.mark.e2e
def test_with_stream_prints_the_predictions_read_back_from_the_output_stream_and_the_dead_letter() -> None:
    import json

    run = run_to_completion(["--exit-after-request", "--with-stream", "--stream-port", str(free_port())],
                            local_run_env())

    assert run.returncode == 0, "\n".join(run.lines)
    assert [line for line in run.lines if not LOG_LINE.match(line)] == []
    marker = f"prediction read back from {STREAM.local_output_stream}: "
    predictions = [json.loads(line.split(marker, 1)[1]) for line in run.lines if marker in line]
    assert sorted(p["order_id"] for p in predictions) == ["ORD-LOCAL-1", "ORD-LOCAL-2", "ORD-LOCAL-3", "ORD-LOCAL-4"]
    assert all(p["est_hours_to_dispatch"] > 0 and p["artefact_id"] for p in predictions)
    [letter] = [line for line in run.lines if "dead letter at " in line]
    assert f"s3://{LOCAL.bucket}/{LAYOUT.stream_dead_letters_prefix}{STREAM.consumer_default_name}/" in letter
    assert "orders_placed" in letter
    assert any("the stream stage stopped (exit code 0)" in line for line in run.lines)


def test_with_stream_on_a_bucket_without_a_local_endpoint_is_an_invalid_argument(
    cli_output: Callable[[], List[str]]
) -> None:
    assert run_local.cli(["--with-stream", "--bucket", "some-bucket"]) == 1

    [line] = cli_output()
    assert "Invalid arguments passed to run_local.py: --with-stream creates streams: with --bucket it needs " \
           "--endpoint-url" in line


# --- the command line and the virtualenv -----------------------------------------------------


def test_endpoint_url_without_bucket_is_an_invalid_argument() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.run_local", "--endpoint-url", f"http://{LOCAL.loopback_host}:9"],
        cwd=LOCAL.repo_root, env=local_run_env(), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "ERROR" in result.stdout and "Invalid arguments passed to run_local.py" in result.stdout


def test_cli_in_process_with_bad_arguments_returns_1_with_the_line_without_usage(
    cli_output: Callable[[], List[str]]
) -> None:
    assert run_local.cli(["--endpoint-url", f"http://{LOCAL.loopback_host}:9"]) == 1

    [line] = cli_output()
    assert re.fullmatch(r"\S+ \S+ - ERROR - run_local\.cli - Invalid arguments passed to run_local\.py: "
                        r"--endpoint-url and --seed-synthetic-data apply only with --bucket", line), line


def test_run_local_imports_only_the_standard_library() -> None:
    # A bare Python with pip must be able to start it, before any requirement is installed.
    probe = (
        "import sys; before = set(sys.modules); import pipeline.run_local; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(new - set(sys.stdlib_module_names) - {'pipeline'}))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=LOCAL.repo_root, env=local_run_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_stop_signal_during_a_log_line_is_not_swallowed_by_logging() -> None:
    """The signal handler raises Stop wherever the main thread is, also inside a logging
    handler, whose errors logging reports and swallows if they are Exceptions."""
    class InterruptedStream(io.StringIO):
        def write(self, text: str) -> int:
            local_run.raise_stop(signal.SIGINT, None)
            return 0

    logger = logging.getLogger("tests.test_run_local.interrupted")
    logger.propagate = False
    handler = logging.StreamHandler(InterruptedStream())  # as configure_logger's, on stdout
    logger.addHandler(handler)
    try:
        with pytest.raises(local_run.Stop, match="SIGINT"):
            logger.warning(f"serving on http://{LOCAL.loopback_host}:8000 until Ctrl-C")
    finally:
        logger.removeHandler(handler)
