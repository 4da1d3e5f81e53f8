"""Crafted and badly signed artefacts against the real serve CLI: each is refused with one
ERROR line and exit 1 before the port opens, never a crash; the line says how to take the
artefact out of service."""
import http.client
import pickle
from datetime import datetime, timezone
from typing import Any, Callable, Dict

import numpy as np
import pytest

from pipeline.artefact.model import Model
from pipeline.model_registry.records import REJECT, StatusChange, put_status_change
from pipeline.settings import API, ARTEFACT, ENVIRONMENT, LAYOUT, LOCAL
from pipeline.storage.layout import model_key
from pipeline.storage.signed_artefacts import put_model
from tests.helpers import (
    StartService,
    crafted_model,
    models_created,
    signed_metadata,
    stop_service,
    the_error_of_a_failed_start,
    wait_until_listening,
)

pytestmark = pytest.mark.e2e

OTHER_KEY = "other:" + "f" * 64


def _child_out_of_range(state: Dict[str, Any]) -> None:
    state["nodes"]["left_child"][0] = 10**6


def _feature_out_of_range(state: Dict[str, Any]) -> None:
    state["nodes"]["feature"][0] = 10**6


def _nan_values(state: Dict[str, Any]) -> None:
    state["values"][:] = np.nan


def _put_signed(s3: Any, bucket: str, model: Model, signing_key: str) -> str:
    key = model_key(model)
    model.artefact_key = key
    body = pickle.dumps(model, protocol=ARTEFACT.pickle_protocol)
    s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata=signed_metadata(body, key, signing_key))
    return key


@pytest.mark.parametrize(
    "edit, problem",
    [
        (_child_out_of_range, "node 0 of the tree has left child 1000000"),
        (_feature_out_of_range, "node 0 of the tree splits on feature 1000000"),
        (_nan_values, "node 0 of the tree has a non-finite value"),
    ],
    ids=["child-index-out-of-range", "feature-index-out-of-range", "nan-values"],
)
def test_a_signed_artefact_with_a_malformed_tree_is_refused_with_one_error_line(
    s3_env: Dict[str, str], s3: Any, bucket_with_datasets: str, trained_model: Model, start: StartService,
    edit: Callable[[Dict[str, Any]], None], problem: str,
) -> None:
    # Signed with the service's own key: structure is checked even for a trusted writer.
    key = put_model(bucket_with_datasets, crafted_model(trained_model, edit), s3)

    line = the_error_of_a_failed_start(bucket_with_datasets, s3_env, start)

    assert f"s3://{bucket_with_datasets}/{key}: malformed model: {problem}" in line


@pytest.mark.parametrize("craft", [
    pytest.param(lambda model: crafted_model(model, _child_out_of_range), id="crafted"),
    # A sound model written by someone without the key: the checksum alone would let it in.
    pytest.param(lambda model: model, id="well-formed"),
])
def test_an_unsigned_artefact_with_a_matching_checksum_is_refused(
    s3_env: Dict[str, str], s3: Any, bucket_with_datasets: str, trained_model: Model, start: StartService,
    craft: Callable[[Model], Model],
) -> None:
    unsigned = craft(trained_model)
    key = model_key(unsigned)
    body = pickle.dumps(unsigned, protocol=ARTEFACT.pickle_protocol)
    s3.put_object(Bucket=bucket_with_datasets, Key=key, Body=body,
                  Metadata={LAYOUT.sha256_metadata_key: signed_metadata(body, key)[LAYOUT.sha256_metadata_key]})

    line = the_error_of_a_failed_start(bucket_with_datasets, s3_env, start)

    assert f"s3://{bucket_with_datasets}/{key}: the artefact is unsigned" in line


def test_a_corrupt_artefact_stops_the_service_with_the_command_that_takes_it_out_of_service(
    s3_env: Dict[str, str], s3: Any, bucket_with_datasets: str, trained_model: Model, start: StartService
) -> None:
    key = model_key(trained_model)
    body = pickle.dumps(trained_model, protocol=ARTEFACT.pickle_protocol)
    s3.put_object(Bucket=bucket_with_datasets, Key=key, Body=body[: len(body) // 2],
                  Metadata=signed_metadata(body, key))

    line = the_error_of_a_failed_start(bucket_with_datasets, s3_env, start)

    assert key in line
    assert line.endswith(f"python -m pipeline.registry {bucket_with_datasets} reject {key} --reason TEXT")


def test_an_artefact_signed_with_another_secret_under_the_services_key_id_is_refused(
    s3_env: Dict[str, str], s3: Any, bucket_with_datasets: str, trained_model: Model, start: StartService
) -> None:
    key = _put_signed(s3, bucket_with_datasets, trained_model, "test:" + "f" * 64)

    line = the_error_of_a_failed_start(bucket_with_datasets, s3_env, start)

    assert (f"s3://{bucket_with_datasets}/{key}: the artefact's signature does not match its bytes "
            "and its key under key id 'test'") in line


def test_an_artefact_re_signed_with_an_unknown_key_id_is_refused(
    s3_env: Dict[str, str], s3: Any, bucket_with_datasets: str, trained_model: Model, start: StartService
) -> None:
    key = _put_signed(s3, bucket_with_datasets, trained_model, OTHER_KEY)

    line = the_error_of_a_failed_start(bucket_with_datasets, s3_env, start)

    assert "signed with key id 'other', which is not one of the keys in MODEL_SIGNING_KEY (test)" in line
    assert key in line


def test_the_error_line_says_how_to_take_the_artefact_out_of_service(
    s3_env: Dict[str, str], s3: Any, bucket_with_datasets: str, trained_model: Model, start: StartService
) -> None:
    key = _put_signed(s3, bucket_with_datasets, trained_model, OTHER_KEY)

    line = the_error_of_a_failed_start(bucket_with_datasets, s3_env, start)

    assert line.endswith(f"python -m pipeline.registry {bucket_with_datasets} reject {key} --reason TEXT")


def test_an_artefact_signed_with_a_previous_key_is_served_after_rotation(
    s3_env: Dict[str, str], s3: Any, bucket_with_datasets: str, trained_model: Model, start: StartService
) -> None:
    _put_signed(s3, bucket_with_datasets, trained_model, OTHER_KEY)
    env = {**s3_env, ENVIRONMENT.signing_key: f"new:{'9' * 64},{OTHER_KEY}"}

    service = start(["-m", "pipeline.serve_model", bucket_with_datasets], env)

    wait_until_listening(service)
    assert stop_service(service) == 0


def test_without_a_signing_key_the_service_says_so_in_its_one_error_line(
    s3_env: Dict[str, str], bucket_with_model: str, start: StartService
) -> None:
    env = {name: value for name, value in s3_env.items() if name != ENVIRONMENT.signing_key}

    line = the_error_of_a_failed_start(bucket_with_model, env, start)

    assert "serve_model failed: MODEL_SIGNING_KEY is not set" in line


def test_a_rejected_artefact_copied_to_a_newer_key_is_not_served(
    s3_env: Dict[str, str], s3: Any, bucket_with_datasets: str, trained_model: Model, start: StartService
) -> None:
    # No key needed: a copy of the rejected object, bytes and metadata, under a newer name.
    rejected = put_model(bucket_with_datasets, trained_model, s3)
    put_status_change(bucket_with_datasets, StatusChange(
        rejected, REJECT, "late orders", "tester", datetime.now(timezone.utc)))
    replay = (f"{LAYOUT.models_prefix}{LAYOUT.model_file_stem}_"
              f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%S.%f}Z_replay01.pkl")
    s3.copy_object(Bucket=bucket_with_datasets, Key=replay, MetadataDirective="COPY",
                   CopySource={"Bucket": bucket_with_datasets, "Key": rejected})

    line = the_error_of_a_failed_start(bucket_with_datasets, s3_env, start)

    assert f"s3://{bucket_with_datasets}/{replay}: " in line
    assert "copied here from another key" in line


def test_an_oversized_newest_artefact_is_refused_from_its_size_with_one_error_line(
    s3_env: Dict[str, str], s3: Any, bucket_with_datasets: str, start: StartService
) -> None:
    size = 40 * 2**20
    key = f"{LAYOUT.models_prefix}{LAYOUT.model_file_stem}_2026-10-01T12:00:00.000000Z_b1660001.pkl"
    s3.put_object(Bucket=bucket_with_datasets, Key=key, Body=b"\0" * size)

    line = the_error_of_a_failed_start(bucket_with_datasets, s3_env, start)

    assert f"s3://{bucket_with_datasets}/{key}: the object is {size:,} bytes, over the limit of" in line


def test_a_report_replaced_in_the_bucket_is_not_served(
    s3_env: Dict[str, str], s3: Any, bucket: str, trained_model: Model, start: StartService
) -> None:
    # Anyone who can write reports/ could put a page with a script in place of the report.
    [model] = models_created(bucket, trained_model, [1])
    s3.put_object(Bucket=bucket, Key=str(model.report_key), ContentType="text/html",
                  Body=b"<html><body><script>alert(1)</script></body></html>")
    service = start(["-m", "pipeline.serve_model", bucket], s3_env)
    wait_until_listening(service)

    connection = http.client.HTTPConnection(LOCAL.loopback_host, service.port, timeout=10)
    connection.request("GET", API.model_report_path)
    response = connection.getresponse()
    body = response.read()
    assert stop_service(service) == 0

    assert (response.status, b"<script>" in body) == (404, False)
    assert (f"the report s3://{bucket}/{model.report_key} is not the one model {model.artefact_id} was "
            "signed with") in service.log()
