"""Shared fixtures: a real S3 API over HTTP (the local S3 server on 127.0.0.1), test data,
a trained model, and services started as subprocesses.

Every test that touches S3 gets its own bucket on one server per session, so tests do not
see each other's objects. `AWS_ENDPOINT_URL` points boto3 (and any subprocess given
`s3_env`) at the server, exactly as an engineer would point the stages at a staging bucket.
"""
import logging
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pandas as pd
import pytest

from pipeline.artefact.model import Model
from pipeline.local.local_s3 import LocalS3, create_bucket
from pipeline.local.synthetic import generate_orders, generate_weeks
from pipeline.settings import ENVIRONMENT, LOCAL
from pipeline.storage.client import s3_client
from pipeline.storage.datasets import put_dataset
from pipeline.storage.signed_artefacts import put_model
from tests.helpers import (
    TEST_SIGNING_KEY,
    TEST_WEEK_SEED,
    MlflowServer,
    Service,
    StartService,
    start_mlflow_server,
    start_service,
    stop_mlflow_server,
)


@pytest.fixture(scope="session", autouse=True)
def signing_key() -> Iterator[str]:
    """The test signing key in MODEL_SIGNING_KEY for the whole session, so that this process
    and every stage subprocess started with its environment signs and verifies artefacts."""
    previous = os.environ.get(ENVIRONMENT.signing_key)
    os.environ[ENVIRONMENT.signing_key] = TEST_SIGNING_KEY
    yield TEST_SIGNING_KEY
    if previous is None:
        os.environ.pop(ENVIRONMENT.signing_key, None)
    else:
        os.environ[ENVIRONMENT.signing_key] = previous


@pytest.fixture
def cli_output(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], List[str]]]:
    """`cli_output()`: the lines an entry point called in-process (`CLI.main(argv)`) wrote on
    stdout since the last call: its log lines in the project's format, as a process prints them,
    and what it prints itself. The logging set-up `main` makes is undone after the test, so no
    later test logs into this test's captured stdout."""
    root = logging.getLogger()
    level, showwarning = root.level, warnings.showwarning
    yield lambda: capsys.readouterr().out.splitlines()
    for handler in list(root.handlers):
        if getattr(handler, "_time_to_dispatch", False):  # the handler configure_logger installs
            root.removeHandler(handler)
    root.setLevel(level)
    warnings.showwarning = showwarning


@pytest.fixture(scope="session")
def local_s3() -> Iterator[LocalS3]:
    """The local S3 server on loopback, for the whole test session."""
    with LocalS3() as server:
        yield server


@pytest.fixture(scope="session")
def s3_endpoint(local_s3: LocalS3) -> str:
    """URL of the local S3 server."""
    return local_s3.endpoint


@pytest.fixture
def s3_env(local_s3: LocalS3, monkeypatch: pytest.MonkeyPatch) -> Dict[str, str]:
    """The AWS environment pointing at the local server, set for this process.

    Returns the full environment for subprocesses, with the repo root on PYTHONPATH.
    """
    for name, value in local_s3.environment().items():
        monkeypatch.setenv(name, value)
    for name in ENVIRONMENT.aws_identity_variables:
        monkeypatch.delenv(name, raising=False)
    return {**os.environ, ENVIRONMENT.python_path: str(LOCAL.repo_root)}


@pytest.fixture
def s3(s3_env: Dict[str, str]) -> Any:
    """A boto3 client for the local server."""
    return s3_client()


@pytest.fixture
def bucket(s3: Any) -> str:
    """An empty versioned bucket of this test's own."""
    return create_bucket(s3)


@pytest.fixture(scope="session")
def test_week() -> pd.DataFrame:
    """The synthetic week the tests train on (1,000 rows)."""
    return generate_orders(n_rows=1000, seed=TEST_WEEK_SEED)


@pytest.fixture
def bucket_with_datasets(s3: Any, bucket: str, test_week: pd.DataFrame) -> str:
    """A bucket with three weekly datasets, the newest being the test week."""
    weeks = generate_weeks(3, seed=100)
    for week in weeks[:-1]:
        put_dataset(bucket, week.data, week.timestamp, s3)
    put_dataset(bucket, test_week, weeks[-1].timestamp, s3)
    return bucket


@pytest.fixture(scope="session")
def trained_model_bytes(local_s3: LocalS3) -> bytes:
    """One model trained by the real train stage on the test week, as its stored bytes.

    Trained once per session (it takes a couple of seconds) and re-uploaded by
    `bucket_with_model` for each test that needs a model in its bucket.
    """
    from pipeline.train.stage import train

    saved = dict(os.environ)
    local_s3.point_environment_here()
    try:
        client = s3_client()
        name = create_bucket(client)
        weeks = generate_weeks(1, seed=100)
        put_dataset(name, generate_orders(1000, seed=TEST_WEEK_SEED), weeks[0].timestamp, client)
        model = train(name, 0.9, 0.95)
        assert model.artefact_key is not None
        return bytes(client.get_object(Bucket=name, Key=model.artefact_key)["Body"].read())
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def trained_model(trained_model_bytes: bytes) -> Model:
    """The session's trained model, unpickled afresh for this test."""
    model = pickle.loads(trained_model_bytes)
    assert isinstance(model, Model)
    return model


@pytest.fixture
def bucket_with_model(s3: Any, bucket_with_datasets: str, trained_model: Model) -> str:
    """A bucket with datasets and one verified model artefact trained on the newest one."""
    put_model(bucket_with_datasets, trained_model, s3)
    return bucket_with_datasets


@pytest.fixture
def start(tmp_path: Path) -> Iterator[StartService]:
    """`start(args, env, cwd=None)`: `helpers.start_service` with the test's tmp_path; any
    service still running after the test is killed."""
    started: List[Service] = []

    def _start(args: List[str], env: Dict[str, str], cwd: Optional[Path] = None) -> Service:
        service = start_service(args, env, tmp_path, cwd)
        started.append(service)
        return service

    yield _start
    for service in started:
        if service.process.poll() is None:
            service.process.kill()
            service.process.wait()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real MLflow tracking server on loopback for the whole session (it takes about 20 s to
    start); each test logs to its own experiment and registered model (`helpers.tracking_env`)."""
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow"))
    yield server
    stop_mlflow_server(server)


@pytest.fixture
def mlflow_reader(mlflow_server: MlflowServer) -> Any:
    """MLflow's own client for the session's server, to read back what was logged."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
