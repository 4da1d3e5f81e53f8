"""Fixtures of the streaming tests: Kinesis on the local server (moto's, the one S3 is on)."""
from typing import Any, Dict

import pytest

from pipeline.streaming.output import kinesis_client


@pytest.fixture
def kinesis(s3_env: Dict[str, str]) -> Any:
    """A boto3 Kinesis client for the local server."""
    return kinesis_client()
