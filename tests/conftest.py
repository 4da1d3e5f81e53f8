"""Shared fixtures: a real S3 API over HTTP (moto's server on 127.0.0.1) and test data.

Every test that touches S3 gets its own bucket on one server per session, so tests do not
see each other's objects. `AWS_ENDPOINT_URL` points boto3 (and any subprocess given
`s3_env`) at the server, exactly as an engineer would point the stages at a staging bucket.
"""
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pandas as pd
import pytest
from moto.server import ThreadedMotoServer

from pipeline import storage
from pipeline.model import Model
from pipeline.synthetic import generate_orders, generate_weeks

REPO_ROOT = Path(__file__).resolve().parents[1]
REGION = "eu-west-2"
# The synthetic week the tests train on: a week like the notebook's (see README, "Model quality").
TEST_WEEK_SEED = 4


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of an S3-compatible server on loopback, for the whole test session."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Dict[str, str]:
    """The AWS environment pointing at the local server, set for this process.

    Returns the full environment for subprocesses, with the repo root on PYTHONPATH.
    """
    values = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    env = {**os.environ, **values, "PYTHONPATH": str(REPO_ROOT)}
    return env


@pytest.fixture
def s3(s3_env: Dict[str, str]) -> Any:
    """A boto3 client for the local server."""
    return storage.s3_client()


def create_bucket(client: Any, versioned: bool = True) -> str:
    """Make a fresh, uniquely named bucket (versioned like production's by default)."""
    name = f"ttd-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    if versioned:
        client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


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
        storage.put_dataset(bucket, week.data, week.timestamp, s3)
    storage.put_dataset(bucket, test_week, weeks[-1].timestamp, s3)
    return bucket


@pytest.fixture(scope="session")
def trained_model_bytes(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """One model trained by the real train stage on the test week, as its stored bytes.

    Trained once per session (it takes a couple of seconds) and re-uploaded by
    `bucket_with_model` for each test that needs a model in its bucket.
    """
    from pipeline import train_model

    env = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        client = storage.s3_client()
        name = create_bucket(client)
        weeks = generate_weeks(1, seed=100)
        storage.put_dataset(name, generate_orders(1000, seed=TEST_WEEK_SEED), weeks[0].timestamp, client)
        model = train_model.main(name, 0.9, 0.95)
        assert model.artefact_key is not None
        return bytes(client.get_object(Bucket=name, Key=model.artefact_key)["Body"].read())
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def trained_model(trained_model_bytes: bytes) -> Model:
    """The session's trained model, unpickled afresh for this test."""
    import pickle

    model = pickle.loads(trained_model_bytes)
    assert isinstance(model, Model)
    return model


@pytest.fixture
def bucket_with_model(s3: Any, bucket_with_datasets: str, trained_model: Model) -> str:
    """A bucket with datasets and one verified model artefact trained on the newest one."""
    storage.put_model(bucket_with_datasets, trained_model, s3)
    return bucket_with_datasets


def run_cli(
    args: List[str], env: Dict[str, str], cwd: Optional[Path] = None, timeout: float = 120
) -> "subprocess.CompletedProcess[str]":
    """Run a command with the test interpreter, capturing its output as text."""
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd or REPO_ROOT, capture_output=True,
        text=True, timeout=timeout,
    )
