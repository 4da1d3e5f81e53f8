"""The local run in order: an embedded S3 (or a real bucket), synthetic weeks, a signing key,
optionally an MLflow tracking server, the train stage's CLI, optionally batch scoring's, the
serve stage's CLI, the example request, optionally the stream stage's CLI with two streams and
example events.

Standard library only at module level, like `pipeline/run_local.py`, which wires
`parse_args`, the virtualenv bootstrap and `run_pipeline` and maps failures to the exit code.
What it does and prints: docs/operations.md.
"""
import argparse
import json
import logging
import os
import secrets
import signal
import sys
from types import FrameType
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

from pipeline.local.processes import (
    Child,
    free_port,
    http_json,
    port_is_free,
    signals_ignored,
    wait_for_port,
    wait_for_ready,
)
from pipeline.settings import API, ENVIRONMENT, LAYOUT, LOCAL, SERVE, STREAM, environment_value

# What the local run and the two stages import; if all of them are importable the current
# virtualenv is good enough to run in place.
RUNTIME_MODULES = ("boto3", "numpy", "pandas", "sklearn", "fastapi", "uvicorn")
EMBEDDED_S3_MODULES = ("moto", "flask", "werkzeug")
# The MLflow server of --with-mlflow (requirements_mlflow.txt; the client alone has no server).
MLFLOW_SERVER_MODULES = ("mlflow", "sqlalchemy", "alembic", "graphene")

DESCRIPTION = "The whole pipeline on one machine: an embedded S3, the train stage, the serve stage."
EXAMPLE_REQUEST = {"product_code": "SKU001", "orders_placed": 112}

log = logging.getLogger(__name__)


class LocalRunError(Exception):
    """A step of the local run failed; the message says which and why."""


class Stop(BaseException):
    """SIGINT or SIGTERM arrived: stop everything and exit cleanly. A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way swallows it: logging's handlers
    catch Exception, and a Ctrl-C while a line is being written would otherwise be lost."""


class Settings(NamedTuple):
    """What the command line asked for."""

    port: int
    s3_port: int
    weeks: int
    r2_error_threshold: float
    r2_warning_threshold: float
    exit_after_request: bool
    bucket: Optional[str]
    endpoint_url: Optional[str]
    seed_synthetic_data: bool
    in_place: bool
    with_batch: bool = False
    with_mlflow: bool = False
    with_stream: bool = False
    stream_port: int = STREAM.consumer_default_port

    @property
    def embedded_s3(self) -> bool:
        return self.bucket is None


class ExampleResult(NamedTuple):
    """What the service answered to the example request and to the lineage request."""

    prediction: Dict[str, Any]
    lineage: Dict[str, Any]


def run_pipeline(settings: Settings) -> None:
    """Run the pipeline locally and serve until stopped.

    Raises:
        LocalRunError: a step failed (S3, train stage, serve stage, example request).
        Stop: SIGINT or SIGTERM arrived; everything started has been stopped by then.
    """
    s3_server = None
    service: Optional[Child] = None
    mlflow_server: Optional[Child] = None
    consumer: Optional[Child] = None
    try:
        if settings.embedded_s3:
            s3_server, endpoint = start_embedded_s3(settings.s3_port)
            bucket = LOCAL.bucket
            create_versioned_bucket(s3_server, bucket)
            log.info(f"embedded S3 at {endpoint}, versioned bucket s3://{bucket}")
        else:
            bucket = str(settings.bucket)
            use_real_bucket(bucket, settings.endpoint_url)
        if settings.embedded_s3 or settings.seed_synthetic_data:
            newest = seed_synthetic_datasets(bucket, settings.weeks)
            if settings.embedded_s3:  # in a real bucket, newer real datasets may exist
                log.info(f"the train stage will pick the newest dataset: s3://{bucket}/{newest}")
        ensure_signing_key()
        if settings.with_mlflow:
            mlflow_server = start_mlflow_server()
        run_train_stage(bucket, settings.r2_error_threshold, settings.r2_warning_threshold)
        if settings.with_batch:
            run_batch_scoring(bucket)
        service = start_serve_stage(bucket, settings.port)
        base_url = f"http://{LOCAL.loopback_host}:{settings.port}"
        wait_for_port(LOCAL.loopback_host, settings.port, service, LOCAL.serve_start_timeout_seconds)
        report_example(request_example(base_url), bucket)
        log.info(f"model report: {base_url}{API.model_report_path}")
        log.info(f"API docs: {base_url}{API.docs_path}")
        if mlflow_server is not None:
            log.info(f"MLflow UI: {environment_value(ENVIRONMENT.mlflow_tracking_uri)}")
        if settings.with_stream:
            consumer = start_stream_stage(bucket, settings.stream_port)
            stream_examples(bucket)
        if settings.exit_after_request:
            log.info("--exit-after-request: stopping")
            return
        log.info(f"serving on {base_url} until Ctrl-C")
        code = service.process.wait()
        raise LocalRunError(f"the serve stage exited by itself with code {code}")
    finally:
        with signals_ignored():
            if consumer is not None:
                consumer.stop(LOCAL.stop_timeout_seconds)
            if service is not None:
                service.stop(LOCAL.stop_timeout_seconds)
            if mlflow_server is not None:
                mlflow_server.stop(LOCAL.stop_timeout_seconds)
            if s3_server is not None:
                s3_server.stop()
                log.info("embedded S3 stopped")


# --- the steps -----------------------------------------------------------------------------


def start_embedded_s3(port: int) -> Tuple[Any, str]:
    """Start the local S3 server on 127.0.0.1 and point this process (and its children) at it.

    Returns:
        The running server and its endpoint URL.

    Raises:
        LocalRunError: if the port cannot be bound.
    """
    # Imported here: moto is a development requirement that exists only once .venv is ready.
    from pipeline.local.local_s3 import LocalS3

    if port and not port_is_free(LOCAL.loopback_host, port):
        raise LocalRunError(f"cannot start the embedded S3: port {port} on {LOCAL.loopback_host} is in use; "
                            "pass another --s3-port (0 picks a free one)")
    server = LocalS3(port).start()
    server.point_environment_here()
    return server, server.endpoint


def ensure_signing_key() -> None:
    """Give both stages a model signing key: MODEL_SIGNING_KEY if set, else a random one.

    A random key lives only as long as this run: the model it trains is signed with it and
    the service it starts verifies with it; artefacts of earlier runs do not verify with it.
    """
    if environment_value(ENVIRONMENT.signing_key):
        log.info(f"signing and verifying model artefacts with the key in {ENVIRONMENT.signing_key}")
        return
    os.environ[ENVIRONMENT.signing_key] = f"local-{secrets.token_hex(4)}:{secrets.token_hex(32)}"
    log.info(f"{ENVIRONMENT.signing_key} is not set: made a random signing key for this run")


def create_versioned_bucket(server: Any, bucket: str) -> None:
    """Create a bucket with versioning on, as production's is.

    Raises:
        LocalRunError: if S3 refuses.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        server.create_bucket(bucket)
    except (ClientError, BotoCoreError) as error:
        raise LocalRunError(f"cannot create the bucket s3://{bucket}: {error}") from error


def use_real_bucket(bucket: str, endpoint_url: Optional[str]) -> None:
    """Point this process and its children at an existing bucket; the AWS environment applies."""
    if endpoint_url:
        os.environ[ENVIRONMENT.aws_endpoint_url] = endpoint_url
    where = environment_value(ENVIRONMENT.aws_endpoint_url) or "AWS (endpoint from the standard AWS configuration)"
    log.info(f"using the existing bucket s3://{bucket} at {where}; no embedded S3 started")


def seed_synthetic_datasets(bucket: str, weeks: int) -> str:
    """Upload `weeks` consecutive synthetic weekly datasets, as data engineering would drop them.

    Returns:
        The key of the newest dataset.

    Raises:
        LocalRunError: if an upload fails.
    """
    from pipeline.local.local_s3 import seed_weeks
    from pipeline.storage.client import StorageError

    try:
        keys = seed_weeks(bucket, weeks)
    except StorageError as error:
        raise LocalRunError(f"cannot upload the synthetic datasets: {error}") from error
    for key in keys:
        log.info(f"uploaded synthetic dataset s3://{bucket}/{key}")
    return keys[-1]


def start_mlflow_server() -> Child:
    """Start an MLflow tracking server on a free loopback port (SQLite and an artifact folder
    under LOCAL.mlflow_folder_name, kept between runs) and point this process and the train
    stage at it with MLFLOW_TRACKING_URI.

    Raises:
        LocalProcessError: the server exited or did not open its port in time.
    """
    folder = LOCAL.repo_root / LOCAL.mlflow_folder_name
    (folder / "artifacts").mkdir(parents=True, exist_ok=True)
    port = free_port(LOCAL.loopback_host)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
               "--artifacts-destination", str(folder / "artifacts"), "--host", LOCAL.loopback_host,
               "--port", str(port), "--workers", "1"]
    log.info(f"starting an MLflow tracking server: {_display(command)} (its log: {folder / 'server.log'})")
    with open(folder / "server.log", "a", encoding="utf-8") as server_log:
        server = Child.start(command, "MLflow server", log_file=server_log)
    try:
        wait_for_port(LOCAL.loopback_host, port, server, LOCAL.mlflow_start_timeout_seconds)
    except BaseException:
        with signals_ignored():
            server.stop(LOCAL.stop_timeout_seconds)
        raise
    os.environ[ENVIRONMENT.mlflow_tracking_uri] = f"http://{LOCAL.loopback_host}:{port}"
    log.info(f"MLflow UI: http://{LOCAL.loopback_host}:{port} (the train stage logs its run there)")
    return server


def run_train_stage(bucket: str, error_threshold: float, warning_threshold: float) -> None:
    """Run the train stage's CLI as a subprocess, forwarding its log lines as they come.

    Raises:
        LocalRunError: if it exits non-zero (its own ERROR line says why).
    """
    command = [sys.executable, "-m", "pipeline.train_model", bucket, str(error_threshold),
               str(warning_threshold)]
    log.info(f"running the train stage: {_display(command)}")
    code = run_to_completion(command, "train stage")
    if code != 0:
        raise LocalRunError(f"the train stage exited with code {code}; no model to serve")


def run_batch_scoring(bucket: str) -> None:
    """Upload a synthetic orders file and score it with the batch CLI, as a subprocess.

    Raises:
        LocalRunError: if the upload fails or the batch CLI exits non-zero.
    """
    from pipeline.local.local_s3 import seed_orders_file
    from pipeline.storage.client import StorageError

    try:
        input_key = seed_orders_file(bucket, LOCAL.batch_input_key)
    except StorageError as error:
        raise LocalRunError(f"cannot upload the orders file to score: {error}") from error
    log.info(f"uploaded an orders file to score: s3://{bucket}/{input_key}")
    command = [sys.executable, "-m", "pipeline.score_batch", bucket, input_key, LOCAL.batch_output_key]
    log.info(f"running batch scoring: {_display(command)}")
    code = run_to_completion(command, "batch scoring")
    if code != 0:
        raise LocalRunError(f"batch scoring exited with code {code}")
    log.info(f"batch scoring output: s3://{bucket}/{LOCAL.batch_output_key} "
             f"(rejects: s3://{bucket}/{LOCAL.batch_output_key}{LAYOUT.rejects_suffix})")


def start_serve_stage(bucket: str, port: int) -> Child:
    """Start the serve stage's CLI as a subprocess on 127.0.0.1:`port`.

    Raises:
        LocalRunError: if the port is already in use.
    """
    if not port_is_free(LOCAL.loopback_host, port):
        raise LocalRunError(f"port {port} on {LOCAL.loopback_host} is in use; pass another --port")
    command = [sys.executable, "-m", "pipeline.serve_model", bucket, "--host", LOCAL.loopback_host, "--port", str(port)]
    log.info(f"starting the serve stage: {_display(command)}")
    service = Child.start(command, "serve stage")
    service.forward_in_background()
    return service


def start_stream_stage(bucket: str, port: int) -> Child:
    """Create the two streams, start the stream stage's CLI as a subprocess on 127.0.0.1:`port`
    and wait until it answers ready.

    Raises:
        LocalRunError: the port is in use, or a stream cannot be created.
        LocalProcessError: the stage exited or was not ready in time.
    """
    from pipeline.local.example_stream import ExampleStreamError, create_streams

    if not port_is_free(LOCAL.loopback_host, port):
        raise LocalRunError(f"port {port} on {LOCAL.loopback_host} is in use; pass another --stream-port")
    try:
        create_streams(STREAM.local_input_stream, STREAM.local_output_stream, STREAM.local_input_shards)
    except ExampleStreamError as error:
        raise LocalRunError(str(error)) from error
    log.info(f"created the streams {STREAM.local_input_stream} ({STREAM.local_input_shards} shards) and "
             f"{STREAM.local_output_stream}")
    command = [sys.executable, "-m", "pipeline.stream_predict", bucket, "--input-stream", STREAM.local_input_stream,
               "--output-stream", STREAM.local_output_stream, "--host", LOCAL.loopback_host, "--port", str(port)]
    log.info(f"starting the stream stage: {_display(command)}")
    consumer = Child.start(command, "stream stage")
    consumer.forward_in_background()
    try:
        wait_for_ready(f"http://{LOCAL.loopback_host}:{port}{API.ready_path}", consumer, STREAM.ready_timeout_seconds)
    except BaseException:
        with signals_ignored():
            consumer.stop(LOCAL.stop_timeout_seconds)
        raise
    return consumer


def stream_examples(bucket: str) -> None:
    """Put the example events on the input stream; print the predictions read back from the
    output stream and the dead letter from the bucket.

    Raises:
        LocalRunError: Kinesis or S3 failed, or the predictions did not come back in time.
    """
    from pipeline.local.example_stream import (
        EXAMPLE_EVENTS,
        VALID_EXAMPLES,
        ExampleStreamError,
        put_examples,
        read_dead_letters,
        read_predictions,
    )

    try:
        for event in EXAMPLE_EVENTS:
            log.info(f"example event on {STREAM.local_input_stream}: {json.dumps(event)}")
        put_examples(STREAM.local_input_stream)
        predictions = read_predictions(STREAM.local_output_stream, VALID_EXAMPLES, STREAM.local_read_back_seconds)
        for prediction in predictions:
            log.info(f"prediction read back from {STREAM.local_output_stream}: {json.dumps(prediction)}")
        letters = read_dead_letters(bucket, STREAM.consumer_default_name, len(EXAMPLE_EVENTS) - VALID_EXAMPLES,
                                    STREAM.local_read_back_seconds)
    except ExampleStreamError as error:
        raise LocalRunError(str(error)) from error
    for letter in letters:
        log.info(f"dead letter at s3://{bucket}/{letter['key']}: {letter['reason']} "
                 f"(sequence number {letter['sequence_number']})")


def request_example(base_url: str) -> ExampleResult:
    """POST the example request, then GET the model's lineage.

    Raises:
        LocalRunError: if either request fails or does not answer JSON.
    """
    log.info(f"example request: POST {base_url}{API.predict_path} {json.dumps(EXAMPLE_REQUEST)}")
    prediction = http_json("POST", f"{base_url}{API.predict_path}", EXAMPLE_REQUEST)
    log.info(f"response: {json.dumps(prediction)}")
    lineage = http_json("GET", f"{base_url}{API.model_path}")
    log.info(f"model lineage (GET {API.model_path}): {json.dumps(lineage, sort_keys=True)}")
    return ExampleResult(prediction, lineage)


def report_example(result: ExampleResult, bucket: str) -> None:
    """Summarise, from the lineage, what the model was trained on, how good it is and where it is."""
    lineage = result.lineage
    dataset = lineage.get("dataset") or {}
    metrics = lineage.get("metrics") or {}
    log.info(
        f"the model was trained on s3://{dataset.get('bucket', bucket)}/{dataset.get('key')} "
        f"(ETag {dataset.get('etag')}, version {dataset.get('version_id')}); "
        f"test r²={_number(metrics.get('r_squared'))}, MAE={_number(metrics.get('mean_absolute_error'))} hours"
    )
    log.info(f"the model artefact is at s3://{bucket}/{lineage.get('artefact_key')}")
    log.info(f"the model report is at s3://{bucket}/{lineage.get('report_key')}")
    log.info(
        f"SKU001 with 112 orders placed: {_number(result.prediction.get('est_hours_to_dispatch'))} "
        f"hours to dispatch (model {result.prediction.get('model_version')})"
    )


def run_to_completion(command: Sequence[str], name: str) -> int:
    """Run a CLI as a child process, forwarding its lines as they come, and return its exit code;
    the child is stopped whatever happens (SIGINT and SIGTERM wait until it is)."""
    child = Child.start(command, name)
    try:
        return child.wait_forwarding()
    finally:
        with signals_ignored():
            child.stop(LOCAL.stop_timeout_seconds)


def _display(command: Sequence[str]) -> str:
    return " ".join(["python" if i == 0 else part for i, part in enumerate(command)])


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else str(value)


def raise_stop(signum: int, frame: Optional[FrameType]) -> None:
    """The local run's handler of SIGINT and SIGTERM: stop everything, cleanly.

    Both signals are ignored from here on, before the Stop is raised: a second signal close
    behind the first (Ctrl-C twice, or `timeout` passing its SIGTERM on to a process that got
    one already) would otherwise raise again inside the clean-up and leave the stages running.
    """
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, signal.SIG_IGN)
    raise Stop(signal.Signals(signum).name)


# --- command line --------------------------------------------------------------------------


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise _ArgumentError(message)


def parse_args(argv: Sequence[str]) -> Settings:
    """Parse the command line.

    Raises:
        ValueError: with the reason, for any bad argument.
    """
    parser = _Parser(prog="python3 -m pipeline.run_local", description=DESCRIPTION)
    parser.add_argument("--port", type=int, default=SERVE.default_port,
                        help=f"port of the serve stage on {LOCAL.loopback_host} (default {SERVE.default_port})")
    parser.add_argument("--s3-port", type=int, default=0,
                        help="port of the embedded S3 server (default 0: any free port)")
    parser.add_argument("--weeks", type=int, default=LOCAL.default_weeks,
                        help=f"synthetic weekly datasets to upload (default {LOCAL.default_weeks})")
    parser.add_argument("--r2-error-threshold", type=float, default=LOCAL.r2_error_threshold)
    parser.add_argument("--r2-warning-threshold", type=float, default=LOCAL.r2_warning_threshold)
    parser.add_argument("--exit-after-request", action="store_true",
                        help="stop after the example request instead of serving until Ctrl-C")
    parser.add_argument("--bucket", help="use this existing bucket instead of the embedded S3")
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint of --bucket")
    parser.add_argument("--seed-synthetic-data", action="store_true",
                        help="also upload the synthetic datasets to --bucket")
    parser.add_argument("--with-batch", action="store_true",
                        help="also score a synthetic orders file with the batch CLI and print where the output is")
    parser.add_argument("--with-mlflow", action="store_true",
                        help="also start an MLflow tracking server, log the training to it and print its UI's URL")
    parser.add_argument("--with-stream", action="store_true",
                        help="also create two Kinesis streams on the embedded server, start the stream stage, put "
                             "example events and print the predictions read back")
    parser.add_argument("--stream-port", type=int, default=STREAM.consumer_default_port,
                        help=f"port of the stream stage's /metrics and /ready on {LOCAL.loopback_host} "
                             f"(default {STREAM.consumer_default_port})")
    parser.add_argument("--in-place", action="store_true",
                        help="run with the current interpreter; never create or update .venv")
    try:
        args = parser.parse_args(list(argv))
    except _ArgumentError as error:
        raise ValueError(str(error)) from None
    for name, value in (("--port", args.port), ("--s3-port", args.s3_port), ("--stream-port", args.stream_port)):
        if not 0 <= value <= 65535 or (name != "--s3-port" and value == 0):
            raise ValueError(f"{name} must be a TCP port, got {value}")
    if args.weeks < 1:
        raise ValueError(f"--weeks must be at least 1, got {args.weeks}")
    if args.bucket is not None and not args.bucket.strip():
        raise ValueError("--bucket is empty")
    if args.bucket is None and (args.endpoint_url or args.seed_synthetic_data):
        raise ValueError("--endpoint-url and --seed-synthetic-data apply only with --bucket")
    if args.with_stream and args.bucket is not None and not args.endpoint_url:
        raise ValueError("--with-stream creates streams: with --bucket it needs --endpoint-url (a local server), "
                         "never the AWS account of the environment")
    if args.with_stream and args.stream_port == args.port:
        raise ValueError(f"--stream-port must differ from --port, both are {args.port}")
    return Settings(
        args.port, args.s3_port, args.weeks, args.r2_error_threshold, args.r2_warning_threshold,
        args.exit_after_request, args.bucket, args.endpoint_url, args.seed_synthetic_data, args.in_place,
        args.with_batch, args.with_mlflow, args.with_stream, args.stream_port,
    )
