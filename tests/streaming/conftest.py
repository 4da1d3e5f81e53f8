"""Fixtures of the streaming tests: real Kinesis streams on the local AWS server (moto's, the
one the S3 tests use, over HTTP), and the partial-failure proxy in front of it."""
import uuid
from typing import Any, Callable, Dict, Iterator

import pytest

from pipeline.local.local_s3 import LocalS3
from pipeline.streaming.output import kinesis_client
from tests.helpers import AwsFaultProxy


@pytest.fixture
def kinesis(s3_env: Dict[str, str]) -> Any:
    """A Kinesis client for the local server, configured as the streaming core configures it."""
    return kinesis_client()


@pytest.fixture
def new_stream(kinesis: Any) -> Callable[..., str]:
    """`new_stream(shards=1)`: a new, active stream of this test's own; returns its name."""
    def create(shards: int = 1) -> str:
        name = f"ttd-{uuid.uuid4().hex[:12]}"
        kinesis.create_stream(StreamName=name, ShardCount=shards)
        kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
        return name
    return create


@pytest.fixture
def aws_proxy(local_s3: LocalS3) -> Iterator[AwsFaultProxy]:
    """The partial-failure proxy in front of the local server, stopped after the test."""
    proxy = AwsFaultProxy(local_s3.endpoint).start()
    yield proxy
    proxy.stop()
