"""Fitting what is served over the tree: the isotonic calibration, the upper bound, the ranges."""
import math

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.tree import DecisionTreeRegressor

from pipeline.artefact.calibration import ServedEstimator
from pipeline.artefact.features import ProductCodeEncoding, encode_features
from pipeline.train.calibrate import fit_calibration, fit_upper_bound, trained_ranges
from pipeline.train.steps import PreparedData


def memorised(sku001: np.ndarray, orders: np.ndarray) -> PreparedData:
    """A tree that memorises SKU001 = `sku001` and SKU002 = the orders themselves, as training rows."""
    encoding = ProductCodeEncoding(("SKU001", "SKU002"))
    n = len(orders)
    X = encode_features(np.concatenate([orders, orders]), ["SKU001"] * n + ["SKU002"] * n, encoding)
    y = np.concatenate([sku001, orders])
    return PreparedData(X, X, y, y, encoding, {"SKU001": n, "SKU002": n}, int(orders.max()))


def test_the_calibration_is_the_isotonic_projection_of_the_trees_estimates_at_the_training_rows() -> None:
    orders = np.arange(11, dtype=float)
    data = memorised(np.array([0, 0, 1, 1, 5, 5, 2, 2, 3, 3, 3], dtype=float), orders)
    tree = DecisionTreeRegressor(random_state=0).fit(data.X_train, data.y_train)

    calibration = fit_calibration(tree, data)

    served = ServedEstimator(tree, calibration, data.encoding.codes)
    at_rows = served.predict(data.X_train)
    expected = IsotonicRegression().fit(orders, data.y_train[:11]).predict(orders)
    np.testing.assert_allclose(at_rows[:11], expected)
    np.testing.assert_allclose(at_rows[11:], orders)  # already non-decreasing: unchanged
    # 5, 5, 2, 2, 3, 3, 3 pooled into their mean, as the isotonic projection does
    assert at_rows[4] == pytest.approx(23 / 7) and at_rows[10] == pytest.approx(23 / 7)


def test_the_calibration_never_falls_between_or_beyond_the_training_rows() -> None:
    rng = np.random.default_rng(3)
    orders = np.sort(rng.integers(0, 200, 300)).astype(float)
    data = memorised(orders * 0.1 + rng.normal(0, 1, 300), orders)
    tree = DecisionTreeRegressor(random_state=0, min_samples_leaf=2).fit(data.X_train, data.y_train)

    served = ServedEstimator(tree, fit_calibration(tree, data), data.encoding.codes)

    grid = np.arange(0.0, 260.0, 0.25)
    for code in data.encoding.codes:
        assert np.all(np.diff(served.predict(encode_features(grid, [code] * len(grid), data.encoding))) >= 0)
    assert np.any(np.diff(tree.predict(encode_features(grid, ["SKU001"] * len(grid), data.encoding))) < 0)


def test_between_training_values_the_steps_follow_the_isotonic_interpolation_at_every_whole_order() -> None:
    orders = np.array([0.0, 2.0, 4.0, 10.0])
    data = memorised(np.array([1.0, 1.0, 2.0, 3.0]), orders)
    tree = DecisionTreeRegressor(random_state=0).fit(data.X_train, data.y_train)

    steps = fit_calibration(tree, data).per_product["SKU001"]

    # Flat from 0 to 2 (one step), then one step per whole order up to 10, at the midpoints.
    assert steps.thresholds == (2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5)
    np.testing.assert_allclose(steps.values, [1.0, 1.5, 2.0, 13 / 6, 14 / 6, 2.5, 16 / 6, 17 / 6, 3.0])
    assert [steps.at(x) for x in (0.0, 2.5, 2.51, 7.0, 1e6)] == [1.0, 1.0, 1.5, 2.5, 3.0]


def test_a_training_value_between_whole_orders_is_served_its_own_projected_value() -> None:
    orders = np.array([0.0, 2.5, 3.0])
    data = memorised(np.array([1.0, 2.0, 4.0]), orders)
    tree = DecisionTreeRegressor(random_state=0).fit(data.X_train, data.y_train)

    steps = fit_calibration(tree, data).per_product["SKU001"]

    assert steps.thresholds == (0.5, 1.5, 2.25, 2.75)
    np.testing.assert_allclose(steps.values, [1.0, 1.4, 1.8, 2.0, 4.0])
    assert steps.at(2.5) == 2.0


def test_a_product_whose_range_holds_more_than_the_maximum_steps_is_stepped_evenly_across_it() -> None:
    orders = np.array([0.0, 1000.0])
    data = memorised(np.array([0.0, 10.0]), orders)
    tree = DecisionTreeRegressor(random_state=0).fit(data.X_train, data.y_train)

    steps = fit_calibration(tree, data, max_steps=10).per_product["SKU001"]

    assert steps.thresholds == tuple(50.0 + 100.0 * i for i in range(10))
    np.testing.assert_allclose(steps.values, np.arange(11.0))


def test_the_upper_bound_is_the_conformal_quantile_with_the_finite_sample_correction() -> None:
    residuals = np.arange(1, 101, dtype=float)  # 1..100

    bound = fit_upper_bound(residuals, 0.9)

    # k = ceil(101 * 0.9) = 91: the 91st smallest residual
    assert bound.margin_hours == 91.0 and bound.n_residuals == 100 and bound.coverage == 0.9
    assert fit_upper_bound(residuals, 0.5).margin_hours == float(math.ceil(101 * 0.5))


def test_the_upper_bound_is_never_below_the_estimate() -> None:
    assert fit_upper_bound(np.array([-3.0, -2.0, -1.0]), 0.5).margin_hours == 0.0


def test_too_few_rows_for_the_coverage_take_the_largest_residual_and_say_so(caplog: pytest.LogCaptureFixture) -> None:
    bound = fit_upper_bound(np.array([0.5, 2.0, 1.0]), 0.9)

    assert bound.margin_hours == 2.0
    assert "too few for an upper bound at coverage 0.9" in caplog.text


@pytest.mark.parametrize("coverage", [0.0, 1.0, -0.1, 1.5])
def test_a_coverage_outside_zero_to_one_is_refused(coverage: float) -> None:
    with pytest.raises(ValueError, match="coverage must be in"):
        fit_upper_bound(np.array([1.0, 2.0]), coverage)


def test_trained_ranges_are_each_products_smallest_and_largest_training_orders() -> None:
    data = memorised(np.zeros(3), np.array([4.0, 9.0, 17.0]))
    data = data._replace(X_train=data.X_train[[0, 1, 4, 5]])  # SKU001 at 4, 9; SKU002 at 9, 17

    ranges = trained_ranges(data)

    assert (ranges["SKU001"].lowest, ranges["SKU001"].highest) == (4.0, 9.0)
    assert (ranges["SKU002"].lowest, ranges["SKU002"].highest) == (9.0, 17.0)
