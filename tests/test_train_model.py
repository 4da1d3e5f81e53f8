"""The whole train stage: `main` in-process and the real CLI in a subprocess, on a real S3 API."""
import logging
from typing import Any, Dict, List, Optional

import pandas as pd
import pytest
import sklearn

from pipeline.artefact.model import Model
from pipeline.local.synthetic import generate_orders
from pipeline.model_registry.live_model import get_live_model, live_model_object
from pipeline.storage.datasets import get_latest_dataset, put_dataset
from pipeline.storage.layout import MODELS_PREFIX, NoObjectsError, latest_object
from pipeline.storage.signed_artefacts import put_model
from pipeline.train import stage, steps
from tests.helpers import LOG_LINE, REPO_ROOT, error_lines, latest_drop, run_cli


def _model_keys(client: Any, bucket: str) -> List[str]:
    return [item["Key"] for item in client.list_objects_v2(Bucket=bucket, Prefix="models/").get("Contents", [])]


def _newest_model_key(bucket: str) -> Optional[str]:
    try:
        return latest_object(bucket, MODELS_PREFIX, ".pkl").key
    except NoObjectsError:
        return None


# --- main(), in-process ---------------------------------------------------------------------

def test_main_persists_a_model_good_enough_for_the_notebooks_bar(
    s3: Any, bucket_with_datasets: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        model = stage.train(bucket_with_datasets, 0.9, 0.95)

    assert model.metrics.r_squared >= 0.97
    assert model.metrics.mean_absolute_error <= 0.95
    assert _model_keys(s3, bucket_with_datasets) == [model.artefact_key]
    assert str(get_live_model(bucket_with_datasets)) == str(model)
    assert f"test metrics: r²={model.metrics.r_squared:.4f}, MAE={model.metrics.mean_absolute_error:.4f}" in caplog.text


def test_main_records_the_lineage_of_the_model(
    s3: Any, bucket_with_datasets: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_COMMIT_HASH", "3f2a9c1d0b7e")
    dataset = get_latest_dataset(bucket_with_datasets)

    model = stage.train(bucket_with_datasets, 0.9, 0.95)

    assert (model.dataset.key, model.dataset.etag, model.dataset.version_id) == (
        dataset.key, dataset.etag, dataset.version_id)
    assert model.dataset.version_id is not None
    assert model.git_commit == "3f2a9c1d0b7e"
    assert set(model.hyperparameters) == {"criterion", "max_depth", "min_samples_split", "min_samples_leaf"}
    assert model.hyperparameters == {
        k: v for k, v in model.estimator.get_params().items() if k in model.hyperparameters
    }
    assert model.library_versions["scikit-learn"] == sklearn.__version__
    assert model.encoding.codes == ("SKU001", "SKU002", "SKU003", "SKU004", "SKU005")
    assert model.created_at.utcoffset() is not None and model.created_at.utcoffset().total_seconds() == 0
    assert model.monotonicity.max_orders_placed == int(dataset.data["orders_placed"].max())
    assert set(model.monotonicity.per_product) == set(model.encoding.codes)
    assert f"data={dataset.key}@{dataset.etag}" in str(model)


def test_main_logs_each_step_as_it_goes(bucket_with_datasets: str, caplog: pytest.LogCaptureFixture) -> None:
    dataset = get_latest_dataset(bucket_with_datasets)

    with caplog.at_level(logging.INFO):
        model = stage.train(bucket_with_datasets, 0.9, 0.95)

    text = caplog.text
    assert f"training on s3://{bucket_with_datasets}/{dataset.key} (ETag {dataset.etag}" in text
    assert "rows per product: {'SKU001': " in text
    assert "grid search: 300 candidates" in text
    assert f"best parameters {model.hyperparameters}" in text
    assert "logic checks passed" in text
    assert "monotonicity over 0.." in text
    assert f"to s3://{bucket_with_datasets}/{model.artefact_key}" in text


def test_main_below_the_error_threshold_persists_nothing_and_keeps_the_previous_model(
    s3: Any, bucket_with_model: str
) -> None:
    before = _model_keys(s3, bucket_with_model)

    with pytest.raises(steps.ModelValidationError, match="below the error threshold 0.999; no model persisted"):
        stage.train(bucket_with_model, 0.999, 0.9995)

    assert _model_keys(s3, bucket_with_model) == before


def test_main_between_the_thresholds_persists_and_warns_of_drift(
    s3: Any, bucket_with_datasets: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        model = stage.train(bucket_with_datasets, 0.5, 0.999)

    assert _model_keys(s3, bucket_with_datasets) == [model.artefact_key]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "below the warning threshold 0.999" in warnings[0] and "drift" in warnings[0]


def test_main_with_the_warning_below_the_error_threshold_works_and_says_so_once(
    s3: Any, bucket_with_datasets: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        model = stage.train(bucket_with_datasets, 0.9, 0.8)

    assert _model_keys(s3, bucket_with_datasets) == [model.artefact_key]
    assert caplog.text.count("no drift warning can fire") == 1
    assert [r for r in caplog.records if r.levelno == logging.WARNING] == []


def test_main_trains_on_a_new_product_without_code_changes(s3: Any, bucket: str) -> None:
    frame = generate_orders(1200, seed=4, product_slopes={"SKU001": 0.075, "SKU002": 0.1, "SKU003": 0.125,
                                                          "SKU004": 0.15, "SKU005": 0.175, "SKU006": 0.2})
    put_dataset(bucket, frame, pd.Timestamp("2026-11-20T23:00:00Z").to_pydatetime())

    model = stage.train(bucket, 0.9, 0.95)

    assert "SKU006" in model.encoding.codes
    assert model.predict(["SKU006"], [150])[0] > model.predict(["SKU006"], [100])[0]


def test_main_on_a_bad_dataset_persists_nothing(s3: Any, bucket_with_model: str) -> None:
    before = _newest_model_key(bucket_with_model)
    frame = generate_orders(1000, seed=1)
    frame.loc[10, "orders_placed"] = -3
    put_dataset(bucket_with_model, frame, latest_drop())

    with pytest.raises(steps.DatasetError, match="negative orders_placed"):
        stage.train(bucket_with_model, 0.9, 0.95)

    assert _newest_model_key(bucket_with_model) == before


# --- argument parsing -----------------------------------------------------------------------

def test_parse_args_reads_bucket_thresholds_and_n_jobs() -> None:
    args = stage.parse_args(["my-bucket", "0.9", "0.8", "--n-jobs", "2"])

    assert (args.bucket, args.error_threshold, args.warning_threshold, args.n_jobs) == ("my-bucket", 0.9, 0.8, 2)


@pytest.mark.parametrize(
    "argv, reason",
    [
        ([], "the following arguments are required"),
        (["bucket", "0.9"], "the following arguments are required"),
        (["bucket", "high", "0.8"], "invalid float value"),
        (["bucket", "0", "0.8"], r"R2_ERROR_THRESHOLD must be in \(0, 1\]"),
        (["bucket", "0.9", "1.01"], r"R2_WARNING_THRESHOLD must be in \(0, 1\]"),
        (["  ", "0.9", "0.8"], "S3_BUCKET is empty"),
        (["bucket", "nan", "0.8"], r"R2_ERROR_THRESHOLD must be in \(0, 1\]"),
        (["bucket", "0.9", "0.8", "extra"], "unrecognized arguments"),
    ],
)
def test_parse_args_rejects_bad_arguments_with_the_reason(argv: List[str], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        stage.parse_args(argv)


# --- the CLI, as engineers and Bodywork run it ----------------------------------------------

def _cli_variants() -> List[Dict[str, Any]]:
    return [
        {"args": ["-m", "pipeline.train_model"], "cwd": REPO_ROOT},
        {"args": ["train_model.py"], "cwd": REPO_ROOT / "pipeline"},
    ]


@pytest.mark.e2e
@pytest.mark.parametrize("variant", _cli_variants(), ids=["python -m", "bodywork"])
def test_cli_trains_and_persists_a_model(s3: Any, s3_env: Dict[str, str], bucket_with_datasets: str,
                                         variant: Dict[str, Any]) -> None:
    result = run_cli([*variant["args"], bucket_with_datasets, "0.9", "0.8"], s3_env, cwd=variant["cwd"])

    assert result.returncode == 0, result.stdout + result.stderr
    keys = _model_keys(s3, bucket_with_datasets)
    assert len(keys) == 1
    assert "persisted model time-to-dispatch:" in result.stdout
    assert f"to s3://{bucket_with_datasets}/{keys[0]}" in result.stdout
    assert isinstance(get_live_model(bucket_with_datasets), Model)
    assert all(LOG_LINE.match(line) for line in result.stdout.splitlines()), result.stdout


@pytest.mark.e2e
@pytest.mark.parametrize(
    "argv",
    [[], ["only-a-bucket"], ["bucket", "0.9"], ["bucket", "high", "0.8"], ["bucket", "0", "0.8"],
     ["bucket", "0.9", "1.5"], ["bucket", "0.9", "0.8", "surplus"]],
)
def test_cli_with_bad_arguments_exits_1_with_the_usage(s3_env: Dict[str, str], argv: List[str]) -> None:
    result = run_cli(["-m", "pipeline.train_model", *argv], s3_env)

    assert result.returncode == 1
    errors = error_lines(result.stdout)
    assert len(errors) == 1
    assert "Invalid arguments passed to train_model.py" in errors[0]
    assert "usage: python -m pipeline.train_model S3_BUCKET R2_ERROR_THRESHOLD R2_WARNING_THRESHOLD" in errors[0]


@pytest.mark.e2e
def test_cli_run_as_bodywork_does_with_bad_arguments_exits_1(s3_env: Dict[str, str]) -> None:
    result = run_cli(["train_model.py", "bucket"], s3_env, cwd=REPO_ROOT / "pipeline")

    assert result.returncode == 1
    assert "Invalid arguments passed to train_model.py" in error_lines(result.stdout)[0]


@pytest.mark.e2e
def test_cli_with_a_missing_bucket_exits_1_naming_it(s3_env: Dict[str, str]) -> None:
    result = run_cli(["-m", "pipeline.train_model", "ttd-does-not-exist", "0.9", "0.8"], s3_env)

    assert result.returncode == 1
    assert error_lines(result.stdout) == [
        line for line in result.stdout.splitlines() if "s3://ttd-does-not-exist: bucket does not exist" in line
    ]
    assert len(error_lines(result.stdout)) == 1


@pytest.mark.e2e
def test_cli_with_no_datasets_exits_1_and_keeps_the_previous_model(
    s3: Any, s3_env: Dict[str, str], bucket: str, trained_model: Model
) -> None:
    put_model(bucket, trained_model)
    before = _newest_model_key(bucket)

    result = run_cli(["-m", "pipeline.train_model", bucket, "0.9", "0.8"], s3_env)

    assert result.returncode == 1
    errors = error_lines(result.stdout)
    assert len(errors) == 1 and f"s3://{bucket}/datasets/: no .csv object with a timestamp in its key" in errors[0]
    assert _newest_model_key(bucket) == before


@pytest.mark.e2e
@pytest.mark.parametrize(
    "body, reason",
    [
        (b"hours_to_dispatch,product_code\n1.0,SKU001\n", "missing column(s) orders_placed"),
        (b"\x00\x01\x02\xff\xfe", "not readable as CSV"),
        (generate_orders(200, seed=2).assign(orders_placed=-1).to_csv(index=False).encode(), "negative orders_placed"),
    ],
    ids=["missing column", "binary", "negative orders"],
)
def test_cli_with_a_bad_csv_exits_1_and_keeps_the_previous_model(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str, body: bytes, reason: str
) -> None:
    before = _newest_model_key(bucket_with_model)
    key = f"datasets/time_to_dispatch_{latest_drop():%Y-%m-%dT%H|%M|%S}.csv"
    s3.put_object(Bucket=bucket_with_model, Key=key, Body=body)

    result = run_cli(["-m", "pipeline.train_model", bucket_with_model, "0.9", "0.8"], s3_env)

    assert result.returncode == 1
    errors = error_lines(result.stdout)
    assert len(errors) == 1 and reason in errors[0], result.stdout
    assert _newest_model_key(bucket_with_model) == before


@pytest.mark.e2e
def test_cli_below_the_error_threshold_exits_1_and_keeps_the_previous_model(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str
) -> None:
    before = _model_keys(s3, bucket_with_model)

    result = run_cli(["-m", "pipeline.train_model", bucket_with_model, "0.999", "0.9999"], s3_env)

    assert result.returncode == 1
    errors = error_lines(result.stdout)
    assert len(errors) == 1 and "is below the error threshold 0.999; no model persisted" in errors[0]
    assert _model_keys(s3, bucket_with_model) == before


def test_cli_without_a_signing_key_exits_1_saying_so_before_reading_data(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str
) -> None:
    before = live_model_object(bucket_with_model, client=s3).key
    env = {name: value for name, value in s3_env.items() if name != "MODEL_SIGNING_KEY"}

    result = run_cli(["-m", "pipeline.train_model", bucket_with_model, "0.9", "0.95"], env)

    assert result.returncode == 1
    [line] = error_lines(result.stdout)
    assert "train_model failed: MODEL_SIGNING_KEY is not set: model artefacts are signed and verified with it" in line
    assert "training on" not in result.stdout
    assert live_model_object(bucket_with_model, client=s3).key == before


def test_cli_with_a_trailing_comma_on_every_row_names_it_not_orders_placed(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str
) -> None:
    week = generate_orders(1000, seed=1).to_csv(index=False).replace("\n", ",\n").replace("product_code,\n",
                                                                                          "product_code\n")
    s3.put_object(Bucket=bucket_with_model, Key="datasets/time_to_dispatch_2026-11-01T00:00:00.csv",
                  Body=week.encode())

    result = run_cli(["-m", "pipeline.train_model", bucket_with_model, "0.9", "0.95"], s3_env)

    assert result.returncode == 1
    [line] = error_lines(result.stdout)
    assert "line 2 has 4 fields, more than the header's 3; a trailing comma?" in line
    assert "orders_placed" not in line


def test_cli_with_a_dataset_over_the_size_limit_refuses_it_unread_and_keeps_the_previous_model(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str
) -> None:
    # Just over the documented 32 MiB (docs/reliability.md), of rows the validation would
    # refuse at once if the stage read them: only the size may stop it.
    limit = 32 * 2**20
    row = b"1.0,-1,SKU001\n"
    body = b"hours_to_dispatch,orders_placed,product_code\n" + row * (limit // len(row) + 1)
    before = _model_keys(s3, bucket_with_model)
    key = f"datasets/time_to_dispatch_{latest_drop():%Y-%m-%dT%H|%M|%S}.csv"
    s3.put_object(Bucket=bucket_with_model, Key=key, Body=body)

    result = run_cli(["-m", "pipeline.train_model", bucket_with_model, "0.9", "0.95"], s3_env)

    assert result.returncode == 1
    [line] = error_lines(result.stdout)
    assert f"s3://{bucket_with_model}/{key}: the dataset is {len(body):,} bytes, over the limit of {limit:,}" in line
    assert "orders_placed" not in line
    assert _model_keys(s3, bucket_with_model) == before
