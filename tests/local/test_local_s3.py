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
    profile, session_token = ENVIRONMENT.aws_identity_variables[:2]
    no_proxy = ENVIRONMENT.no_proxy_variables[0]
    environ: Dict[str, str] = {profile: "production", session_token: "token", no_proxy: "example"}

    local_s3.point_environment_here(environ)

    assert profile not in environ and session_token not in environ
    assert environ[ENVIRONMENT.aws_endpoint_url] == local_s3.endpoint
    assert environ[no_proxy].split(",") == ["example", LOCAL.loopback_host, "localhost"]
    assert profile not in os.environ or os.environ[profile] != "production"


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
