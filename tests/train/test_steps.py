"""The train stage's steps: validation, split, evaluation, logic checks, thresholds, monotonicity."""
import logging
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeRegressor

from pipeline.artefact.features import ProductCodeEncoding, encode_features
from pipeline.artefact.model import InvalidModelError, TaskMetrics
from pipeline.local.synthetic import generate_orders
from pipeline.settings import ARTEFACT, TRAIN
from pipeline.storage.datasets import Dataset
from pipeline.train import steps
from pipeline.train.steps import DatasetError, ModelValidationError, PreparedData


# --- validate_dataset / prepare_data --------------------------------------------------------

def test_validate_dataset_names_missing_columns() -> None:
    frame = generate_orders(100, seed=1).drop(columns=["orders_placed"])

    with pytest.raises(DatasetError, match="missing column.*orders_placed"):
        steps.validate_dataset(frame)


def test_validate_dataset_rejects_non_numeric_orders_placed() -> None:
    frame = generate_orders(100, seed=1).astype({"orders_placed": object})
    frame.loc[5, "orders_placed"] = "lots"

    with pytest.raises(DatasetError, match=r"1 row\(s\) with non-numeric orders_placed \(e.g. 'lots'\) at CSV line"):
        steps.validate_dataset(frame)


def test_validate_dataset_rejects_negative_orders_placed() -> None:
    frame = generate_orders(100, seed=1)
    frame.loc[[3, 4], "orders_placed"] = -1

    with pytest.raises(DatasetError, match=r"2 row\(s\) with negative orders_placed"):
        steps.validate_dataset(frame)


def test_validate_dataset_rejects_missing_labels() -> None:
    frame = generate_orders(100, seed=1)
    frame.loc[7, "hours_to_dispatch"] = np.nan

    with pytest.raises(DatasetError, match=r"1 row\(s\) with missing hours_to_dispatch \(label\) at CSV line\(s\) 9"):
        steps.validate_dataset(frame)


def test_validate_dataset_reports_every_problem_together() -> None:
    frame = generate_orders(100, seed=1)
    frame.loc[1, "orders_placed"] = -5
    frame.loc[2, "hours_to_dispatch"] = np.nan
    frame.loc[3, "product_code"] = np.nan

    with pytest.raises(DatasetError) as raised:
        steps.validate_dataset(frame)

    message = str(raised.value)
    assert "negative orders_placed" in message
    assert "missing hours_to_dispatch" in message
    assert "missing product_code" in message


def test_validate_dataset_rejects_a_product_with_too_few_rows() -> None:
    frame = pd.concat(
        [generate_orders(200, seed=1), pd.DataFrame({"hours_to_dispatch": [1.0] * 3, "orders_placed": [5] * 3,
                                                     "product_code": ["SKU009"] * 3})],
        ignore_index=True,
    )

    with pytest.raises(DatasetError,
                       match=r"too few rows for product\(s\) SKU009 \(3\); each product needs at least 10"):
        steps.validate_dataset(frame)


def test_validate_dataset_rejects_an_empty_dataset() -> None:
    with pytest.raises(DatasetError, match="no rows"):
        steps.validate_dataset(generate_orders(10, seed=1).iloc[0:0])


def test_prepare_data_splits_80_20_stratified_by_product_with_random_state_42() -> None:
    frame = generate_orders(1000, seed=5)

    data = steps.prepare_data(frame)

    assert (len(data.y_train), len(data.y_test)) == (800, 200)
    expected_train, expected_test = train_test_split(
        frame, test_size=0.2, stratify=frame["product_code"], random_state=42
    )
    np.testing.assert_array_equal(data.y_test, expected_test["hours_to_dispatch"].to_numpy())
    np.testing.assert_array_equal(data.X_train[:, 0], expected_train["orders_placed"].to_numpy())
    test_share = pd.Series(data.X_test[:, 1]).value_counts(normalize=True).sort_index().to_numpy()
    all_share = frame["product_code"].value_counts(normalize=True).sort_index().to_numpy()
    np.testing.assert_allclose(test_share, all_share, atol=0.01)


def test_prepare_data_learns_the_encoding_including_a_new_product() -> None:
    frame = generate_orders(500, seed=5)
    frame.loc[frame.index[:40], "product_code"] = "SKU006"

    data = steps.prepare_data(frame)

    assert data.encoding.codes == ("SKU001", "SKU002", "SKU003", "SKU004", "SKU005", "SKU006")
    assert data.rows_per_product["SKU006"] == 40


def test_prepare_data_records_the_largest_orders_placed() -> None:
    frame = generate_orders(300, seed=5)

    assert steps.prepare_data(frame).max_orders_placed == frame["orders_placed"].max()


# --- evaluate / logic checks / thresholds ---------------------------------------------------

@pytest.fixture(scope="module")
def prepared() -> PreparedData:
    return steps.prepare_data(generate_orders(1000, seed=4))


@pytest.fixture(scope="module")
def good_tree(prepared: PreparedData) -> DecisionTreeRegressor:
    return DecisionTreeRegressor(max_depth=8, min_samples_leaf=2, random_state=42).fit(
        prepared.X_train, prepared.y_train
    )


def test_evaluate_reports_r2_and_mae_on_the_test_split(
    prepared: PreparedData, good_tree: DecisionTreeRegressor
) -> None:
    metrics = steps.evaluate(good_tree, prepared)

    predictions = good_tree.predict(prepared.X_test)
    assert metrics.r_squared == pytest.approx(r2_score(prepared.y_test, predictions), abs=1e-12)
    assert metrics.mean_absolute_error == pytest.approx(mean_absolute_error(prepared.y_test, predictions), abs=1e-12)
    assert (metrics.n_train, metrics.n_test) == (800, 200)


def test_check_model_logic_passes_a_sound_model(prepared: PreparedData, good_tree: DecisionTreeRegressor) -> None:
    steps.check_model_logic(good_tree, prepared)


def test_check_model_logic_fails_when_estimates_fall_from_100_to_150_orders(prepared: PreparedData) -> None:
    falling = DecisionTreeRegressor(max_depth=6, random_state=42).fit(prepared.X_train, 60 - prepared.y_train)

    with pytest.raises(ModelValidationError) as raised:
        steps.check_model_logic(falling, prepared)

    for code in prepared.encoding.codes:
        assert f"{code}: estimate at 150 orders" in str(raised.value)


def test_check_model_logic_fails_on_negative_estimates(prepared: PreparedData) -> None:
    shifted = DecisionTreeRegressor(max_depth=6, random_state=42).fit(prepared.X_train, prepared.y_train - 5)

    with pytest.raises(ModelValidationError, match=r"\d+ negative estimate\(s\) on the test set"):
        steps.check_model_logic(shifted, prepared)


def test_check_model_logic_fails_on_estimates_above_125_percent_of_the_largest_label(
    prepared: PreparedData, good_tree: DecisionTreeRegressor
) -> None:
    shrunk_labels = prepared._replace(y_test=prepared.y_test * 0.5)

    with pytest.raises(ModelValidationError,
                       match=r"estimate\(s\) on the test set above 1.25 x the largest test label"):
        steps.check_model_logic(good_tree, shrunk_labels)


def test_check_model_logic_reports_all_failures_in_one_error(prepared: PreparedData) -> None:
    bad = DecisionTreeRegressor(max_depth=6, random_state=42).fit(prepared.X_train, 20 - prepared.y_train)

    with pytest.raises(ModelValidationError) as raised:
        steps.check_model_logic(bad, prepared._replace(y_test=prepared.y_test * 0.3))

    message = str(raised.value)
    assert "estimate at 150 orders" in message
    assert "negative estimate" in message
    assert "above 1.25 x the largest test label" in message


def _metrics(r_squared: float) -> TaskMetrics:
    return TaskMetrics(r_squared=r_squared, mean_absolute_error=1.0, n_train=800, n_test=200)


def test_check_r_squared_below_the_error_threshold_raises() -> None:
    with pytest.raises(ModelValidationError,
                       match="test r² 0.8500 is below the error threshold 0.9; no model persisted"):
        steps.check_r_squared(_metrics(0.85), 0.9, 0.95)


def test_check_r_squared_at_the_error_threshold_passes() -> None:
    steps.check_r_squared(_metrics(0.9), 0.9, 0.8)


def test_check_r_squared_between_the_thresholds_warns_of_drift(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        steps.check_r_squared(_metrics(0.92), 0.9, 0.95)

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "below the warning threshold 0.95" in warnings[0].getMessage()
    assert "drift" in warnings[0].getMessage()


def test_check_r_squared_above_the_warning_threshold_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        steps.check_r_squared(_metrics(0.97), 0.9, 0.95)

    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("error, warning", [(0.0, 0.5), (1.5, 0.5), (0.9, -0.1), (float("nan"), 0.9)])
def test_check_thresholds_valid_rejects_values_outside_0_1(error: float, warning: float) -> None:
    with pytest.raises(ValueError, match=r"must be a number in \(0, 1\]"):
        steps.check_thresholds_valid(error, warning)


def test_check_thresholds_valid_says_when_no_drift_warning_can_fire(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        steps.check_thresholds_valid(0.9, 0.8)

    assert sum("no drift warning can fire" in r.getMessage() for r in caplog.records) == 1


# --- monotonicity ---------------------------------------------------------------------------

def test_measure_monotonicity_counts_falling_steps_and_the_largest_drop() -> None:
    # A tree that memorises SKU001 = 0,0,1,1,5,5,2,2,3,3,3 over 0..10 orders (one fall of 3h)
    # and SKU002 = the orders themselves (never falls).
    orders = np.arange(11, dtype=float)
    sku001 = np.array([0, 0, 1, 1, 5, 5, 2, 2, 3, 3, 3], dtype=float)
    encoding = ProductCodeEncoding(("SKU001", "SKU002"))
    X = encode_features(np.concatenate([orders, orders]), ["SKU001"] * 11 + ["SKU002"] * 11, encoding)
    y = np.concatenate([sku001, orders])
    tree = DecisionTreeRegressor(random_state=0).fit(X, y)
    data = PreparedData(X, X, y, y, encoding, {"SKU001": 11, "SKU002": 11}, 10)

    report = steps.measure_monotonicity(tree, data)

    assert report.per_product["SKU001"].decreasing_steps == 1
    assert report.per_product["SKU001"].largest_drop_hours == pytest.approx(3.0)
    assert report.per_product["SKU002"].decreasing_steps == 0
    assert report.total_decreasing_steps == 1
    assert report.max_orders_placed == 10


def test_a_huge_cell_is_quoted_cut_to_a_short_prefix_with_its_length() -> None:
    data = generate_orders(100, seed=1)
    data[steps.ORDERS_COLUMN] = data[steps.ORDERS_COLUMN].astype(object)
    data.loc[3, steps.ORDERS_COLUMN] = "x" * 20_000_000

    with pytest.raises(DatasetError) as raised:
        steps.validate_dataset(data)

    assert f"(e.g. {'x' * 100!r}... (20000000 characters))" in str(raised.value)
    assert len(str(raised.value)) < 500


def test_product_codes_differing_only_in_case_or_spaces_are_named_in_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = generate_orders(1000, seed=1)
    data.loc[:19, steps.PRODUCT_COLUMN] = "sku002"
    data.loc[20:29, steps.PRODUCT_COLUMN] = " SKU002"
    caplog.set_level(logging.WARNING)

    validated = steps.validate_dataset(data)

    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith("product codes that differ only in case or surrounding spaces: ' SKU002' (10 rows), "
                              "'SKU002' (")
    assert "'sku002' (20 rows); spaces are trimmed and case is kept, so they train as 2 distinct code(s)" in warning
    assert {"sku002", "SKU002"} <= set(validated[steps.PRODUCT_COLUMN])


# --- product codes and orders_placed within what a model may hold -----------------------------

def test_validate_dataset_refuses_a_product_code_over_the_length_limit_quoting_it_cut_short() -> None:
    frame = generate_orders(200, seed=6)
    frame.loc[frame.index[:10], "product_code"] = "X" * 130_000

    with pytest.raises(DatasetError) as raised:
        steps.validate_dataset(frame)

    message = str(raised.value)
    assert message.startswith(f"10 row(s) with product_code longer than {TRAIN.max_product_code_chars} characters "
                              f"(e.g. {'X' * 100!r}... (130000 characters)) at CSV line(s) 2, 3, 4, 5, 6...")
    assert len(message) < 1_000


@pytest.mark.parametrize("code", ["SKU 001", "SKU<1>", "SKÜ001", "SKU\t1"])
def test_validate_dataset_refuses_a_product_code_outside_the_character_set(code: str) -> None:
    frame = generate_orders(200, seed=6)
    frame.loc[frame.index[:10], "product_code"] = code

    with pytest.raises(DatasetError, match="10 row\\(s\\) with product_code outside the allowed characters"):
        steps.validate_dataset(frame)


@pytest.mark.parametrize("code", ["SKU001", "A", "sku-001_b.2/x", "Z" * 64])
def test_validate_dataset_accepts_product_codes_within_the_rule(code: str) -> None:
    frame = generate_orders(200, seed=6)
    frame.loc[frame.index[:20], "product_code"] = code

    assert code in set(steps.validate_dataset(frame)["product_code"])


def test_validate_dataset_refuses_orders_placed_above_what_a_model_may_be_trained_on() -> None:
    frame = generate_orders(200, seed=6)
    frame.loc[frame.index[3], "orders_placed"] = ARTEFACT.max_trained_orders_placed + 1

    with pytest.raises(DatasetError, match=(
            f"1 row\\(s\\) with orders_placed above {ARTEFACT.max_trained_orders_placed:,} "
            f"\\(e.g. {ARTEFACT.max_trained_orders_placed + 1}\\) at CSV line\\(s\\) 5")):
        steps.validate_dataset(frame)


def test_validate_dataset_names_five_products_with_too_few_rows_and_counts_the_rest() -> None:
    frame = generate_orders(600, seed=6)
    frame["product_code"] = [f"P{i:04d}" for i in range(len(frame))]

    with pytest.raises(DatasetError) as raised:
        steps.validate_dataset(frame)

    assert str(raised.value) == (
        "too few rows for product(s) P0000 (1), P0001 (1), P0002 (1), P0003 (1), P0004 (1) and 595 more; "
        f"each product needs at least {TRAIN.min_rows_per_product}")


def test_build_model_refuses_a_model_the_serve_stage_would_refuse(prepared: PreparedData,
                                                                  good_tree: DecisionTreeRegressor) -> None:
    beyond = prepared._replace(max_orders_placed=ARTEFACT.max_trained_orders_placed + 1)
    dataset = Dataset(generate_orders(1), "bucket", "datasets/time_to_dispatch_2026-10-02T23:00:00.csv",
                      datetime(2026, 10, 2, 23, tzinfo=timezone.utc), "etag", None)

    with pytest.raises(InvalidModelError, match="the largest orders_placed seen in training is 100001"):
        steps.build_model(good_tree, {}, beyond, steps.evaluate(good_tree, beyond), dataset)
