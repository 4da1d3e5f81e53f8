"""Fixtures of the serve stage's tests: the model the service serves, and a client of its app.

Both are defined here once, for every test of `tests/serve/`.
"""
import pytest
from fastapi.testclient import TestClient

from pipeline.artefact.model import Model
from pipeline.model_registry.live_model import get_live_model
from pipeline.serve.api import create_app


@pytest.fixture
def served_model(bucket_with_model: str) -> Model:
    """The newest model of a bucket, loaded and verified by the storage module, as the service
    loads it at start-up."""
    return get_live_model(bucket_with_model)


@pytest.fixture
def client(served_model: Model) -> TestClient:
    """A client of the service's app serving `served_model`, as production builds it (metrics
    on by default)."""
    return TestClient(create_app(served_model))
