"""The one local S3: moto's server on loopback, versioned buckets, synthetic weeks, over HTTP."""
import os
import socket
from typing import Any, Dict

import pytest

from pipeline.local.local_s3 import LocalS3, create_bucket, seed_weeks
from pipeline.local.synthetic import generate_weeks
from pipeline.settings import ENVIRONMENT, LOCAL
from pipeline.storage.datasets import get_latest_dataset
from pipeline.storage.layout import dataset_key


def test_local_s3_listens_on_loopback_and_stops(tmp_path: Any) -> None:
    with LocalS3() as server:
        host, port = server.endpoint.removeprefix("http://").split(":")
        assert host == LOCAL.loopback_host
        socket.create_connection((host, int(port)), timeout=2).close()

    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2).close()


def test_environment_points_boto3_at_the_server_with_dummy_credentials(local_s3: LocalS3) -> None:
    environment = local_s3.environment()

    assert environment[ENVIRONMENT.aws_endpoint_url] == local_s3.endpoint
    assert environment[ENVIRONMENT.aws_access_key_id] == environment[ENVIRONMENT.aws_secret_access_key] == "testing"


def test_point_environment_here_drops_aws_identities_and_bypasses_proxies(local_s3: LocalS3) -> None:
    environ: Dict[str, str] = {"AWS_PROFILE": "production", "AWS_SESSION_TOKEN": "token", "NO_PROXY": "example"}

    local_s3.point_environment_here(environ)

    assert "AWS_PROFILE" not in environ and "AWS_SESSION_TOKEN" not in environ
    assert environ[ENVIRONMENT.aws_endpoint_url] == local_s3.endpoint
    assert environ["NO_PROXY"].split(",") == ["example", LOCAL.loopback_host, "localhost"]
    assert "AWS_PROFILE" not in os.environ or os.environ["AWS_PROFILE"] != "production"


def test_create_bucket_makes_a_versioned_bucket_by_default(s3: Any) -> None:
    versioned = create_bucket(s3)
    plain = create_bucket(s3, versioned=False)

    assert s3.get_bucket_versioning(Bucket=versioned).get("Status") == "Enabled"
    assert s3.get_bucket_versioning(Bucket=plain).get("Status") is None
    assert versioned != plain


def test_seed_weeks_uploads_data_engineerings_weekly_files_oldest_first(s3: Any, bucket: str) -> None:
    keys = seed_weeks(bucket, 3, rows_per_week=50)

    assert keys == [dataset_key(week.timestamp) for week in generate_weeks(3, rows_per_week=50)]
    newest = get_latest_dataset(bucket)
    assert newest.key == keys[-1]
    assert len(newest.data) == 50
