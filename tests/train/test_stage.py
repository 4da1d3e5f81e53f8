"""The train stage in order, in-process, on a real S3 API: the quality bar, the lineage, the log
lines, the threshold semantics, a new product, a bad dataset; and its arguments.
"""
import logging
from typing import Any, List

import numpy as np
import pandas as pd
import pytest
import sklearn

from pipeline.artefact.calibration import ServedEstimator

from pipeline.local.synthetic import generate_orders
from pipeline.model_registry.live_model import get_live_model
from pipeline.settings import ENVIRONMENT, TRAIN
from pipeline.storage.datasets import get_latest_dataset, put_dataset
from pipeline.train import stage, steps
from tests.helpers import latest_drop, model_keys, newest_model_key


def test_train_persists_a_model_good_enough_for_the_notebooks_bar(
    s3: Any, bucket_with_datasets: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        model = stage.train(bucket_with_datasets, 0.9, 0.95)

    assert model.metrics.r_squared >= 0.97
    assert model.metrics.mean_absolute_error <= 0.95
    assert model_keys(s3, bucket_with_datasets) == [model.artefact_key]
    assert str(get_live_model(bucket_with_datasets)) == str(model)
    assert f"test metrics: r²={model.metrics.r_squared:.4f}, MAE={model.metrics.mean_absolute_error:.4f}" in caplog.text


def test_train_records_the_lineage_of_the_model(
    s3: Any, bucket_with_datasets: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENVIRONMENT.git_commit, "3f2a9c1d0b7e")
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


def test_train_logs_each_step_as_it_goes(bucket_with_datasets: str, caplog: pytest.LogCaptureFixture) -> None:
    dataset = get_latest_dataset(bucket_with_datasets)

    with caplog.at_level(logging.INFO):
        model = stage.train(bucket_with_datasets, 0.9, 0.95)

    text = caplog.text
    assert f"training on s3://{bucket_with_datasets}/{dataset.key} (ETag {dataset.etag}" in text
    assert "rows per product: {'SKU001': " in text
    assert "grid search: 300 candidates" in text
    assert f"best parameters {model.hyperparameters}" in text
    assert "logic checks passed" in text
    assert "monotonicity of the tree over 0.." in text
    assert "monotonicity of the served estimate over 0.." in text and "0 decreasing step(s)" in text
    assert "the tree's test metrics: r²=" in text and "the served estimate's test metrics: r²=" in text
    assert "upper bound: estimate + " in text
    assert f"to s3://{bucket_with_datasets}/{model.artefact_key}" in text


def test_train_below_the_error_threshold_persists_nothing_and_keeps_the_previous_model(
    s3: Any, bucket_with_model: str
) -> None:
    before = model_keys(s3, bucket_with_model)

    with pytest.raises(steps.ModelValidationError, match="below the error threshold 0.999; no model persisted"):
        stage.train(bucket_with_model, 0.999, 0.9995)

    assert model_keys(s3, bucket_with_model) == before


def test_train_between_the_thresholds_persists_and_warns_of_drift(
    s3: Any, bucket_with_datasets: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        model = stage.train(bucket_with_datasets, 0.5, 0.999)

    assert model_keys(s3, bucket_with_datasets) == [model.artefact_key]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "below the warning threshold 0.999" in warnings[0] and "drift" in warnings[0]


def test_train_with_the_warning_below_the_error_threshold_works_and_says_so_once(
    s3: Any, bucket_with_datasets: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        model = stage.train(bucket_with_datasets, 0.9, 0.8)

    assert model_keys(s3, bucket_with_datasets) == [model.artefact_key]
    assert caplog.text.count("no drift warning can fire") == 1
    assert [r for r in caplog.records if r.levelno == logging.WARNING] == []


def test_train_trains_on_a_new_product_without_code_changes(s3: Any, bucket: str) -> None:
    frame = generate_orders(1200, seed=4, product_slopes={"SKU001": 0.075, "SKU002": 0.1, "SKU003": 0.125,
                                                          "SKU004": 0.15, "SKU005": 0.175, "SKU006": 0.2})
    put_dataset(bucket, frame, pd.Timestamp("2026-11-20T23:00:00Z").to_pydatetime())

    model = stage.train(bucket, 0.9, 0.95)

    assert "SKU006" in model.encoding.codes
    assert model.predict(["SKU006"], [150])[0] > model.predict(["SKU006"], [100])[0]


def test_train_on_a_bad_dataset_persists_nothing(s3: Any, bucket_with_model: str) -> None:
    before = newest_model_key(bucket_with_model)
    frame = generate_orders(1000, seed=1)
    frame.loc[10, "orders_placed"] = -3
    put_dataset(bucket_with_model, frame, latest_drop())

    with pytest.raises(steps.DatasetError, match="negative orders_placed"):
        stage.train(bucket_with_model, 0.9, 0.95)

    assert newest_model_key(bucket_with_model) == before


def test_train_serves_the_calibrated_estimate_and_keeps_the_trees_metrics_beside_it(
    bucket_with_datasets: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    judged: List[Any] = []
    monkeypatch.setattr(stage, "logic_check_failures", lambda estimator, data: judged.append(estimator) or [])

    model = stage.train(bucket_with_datasets, 0.9, 0.95)

    assert model.calibration is not None and model.tree_metrics is not None
    assert [type(e) for e in judged] == [ServedEstimator] and judged[0].calibration is model.calibration
    assert model.metrics != model.tree_metrics
    assert model.metrics.mean_absolute_error < model.tree_metrics.mean_absolute_error
    assert model.served_monotonicity is not None and model.served_monotonicity.total_decreasing_steps == 0
    assert model.upper_bound is not None and model.upper_bound.coverage == TRAIN.default_upper_coverage
    assert model.upper_bound.n_residuals == model.metrics.n_test


def test_train_without_calibration_serves_the_tree_with_a_bound_at_the_coverage_asked(
    bucket_with_datasets: str
) -> None:
    model = stage.train(bucket_with_datasets, 0.9, 0.95, calibrate=False, upper_coverage=0.8)

    assert model.calibration is None and model.metrics == model.tree_metrics
    orders = np.arange(0.0, 330.0, 0.5)
    assert model.predict(["SKU002"] * len(orders), orders).tolist() == \
        model.predict_tree(["SKU002"] * len(orders), orders).tolist()
    assert model.upper_bound is not None and model.upper_bound.coverage == 0.8
    assert model.trained_ranges is not None and set(model.trained_ranges) == set(model.product_codes)


def test_parse_args_reads_the_calibration_switch_and_the_upper_coverage() -> None:
    defaults = stage.parse_args(["my-bucket", "0.9", "0.8"])
    chosen = stage.parse_args(["my-bucket", "0.9", "0.8", "--no-calibration", "--upper-coverage", "0.95"])

    assert (defaults.calibrate, defaults.upper_coverage) == (TRAIN.calibrate, TRAIN.default_upper_coverage)
    assert (chosen.calibrate, chosen.upper_coverage) == (False, 0.95)


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
        (["bucket", "0.9", "0.8", "--upper-coverage", "1"], r"coverage must be a number in \(0, 1\)"),
        (["bucket", "0.9", "0.8", "--upper-coverage", "nan"], r"coverage must be a number in \(0, 1\)"),
    ],
)
def test_parse_args_rejects_bad_arguments_with_the_reason(argv: List[str], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        stage.parse_args(argv)
