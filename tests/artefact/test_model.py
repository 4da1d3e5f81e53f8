"""The model artefact: predictions, version string, hash, pickling and lineage."""
import pickle

import numpy as np
import pytest

from pipeline.artefact.features import UnknownProductCodeError, encode_features
from pipeline.artefact.model import Model, estimator_hash


ORDERS = list(np.linspace(0, 400, 801)) + [99.99999, 100.0000001, 1e6, 0.0, 152.5, 1e-30]


def test_the_tree_walk_equals_the_estimators_predict_for_every_product(trained_model: Model) -> None:
    trained_model.calibration = None  # served as the tree: predict_one walks it
    for code in trained_model.product_codes:
        expected = trained_model.estimator.predict(encode_features(ORDERS, [code] * len(ORDERS),
                                                                   trained_model.encoding))
        actual = [trained_model.predict_one(code, value) for value in ORDERS]
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-9)


def test_predict_one_equals_predict_exactly_for_a_calibrated_model(trained_model: Model) -> None:
    assert trained_model.calibration is not None
    for code in trained_model.product_codes:
        breakpoints = list(trained_model.calibration.per_product[code].thresholds)
        orders = ORDERS + breakpoints + [float(np.nextafter(b, np.inf)) for b in breakpoints]
        expected = trained_model.predict([code] * len(orders), orders).tolist()
        assert [trained_model.predict_one(code, value) for value in orders] == expected


def test_the_served_estimate_never_falls_as_orders_grow(trained_model: Model) -> None:
    orders = np.arange(0.0, trained_model.monotonicity.max_orders_placed + 20.5, 0.5)
    for code in trained_model.product_codes:
        assert np.all(np.diff(trained_model.predict([code] * len(orders), orders)) >= 0), code
    assert trained_model.served_monotonicity is not None
    assert trained_model.served_monotonicity.total_decreasing_steps == 0


def test_the_tree_it_calibrates_does_fall_on_the_tests_week(trained_model: Model) -> None:
    # What the calibration is for: the grid-searched tree dips on a noisy week.
    assert trained_model.monotonicity.total_decreasing_steps > 0


def test_estimate_one_equals_estimate_on_every_field(trained_model: Model) -> None:
    assert trained_model.upper_bound is not None
    for code in trained_model.product_codes:
        many = trained_model.estimate([code] * len(ORDERS), ORDERS)
        assert many.upper_hours_to_dispatch is not None
        for i, value in enumerate(ORDERS):
            one = trained_model.estimate_one(code, value)
            assert one.est_hours_to_dispatch == many.est_hours_to_dispatch[i]
            assert one.upper_hours_to_dispatch == many.upper_hours_to_dispatch[i]
            assert one.extrapolated == bool(many.extrapolated[i])


def test_the_upper_bound_is_the_estimate_plus_the_margin_and_never_below_it(trained_model: Model) -> None:
    assert trained_model.upper_bound is not None
    one = trained_model.estimate_one("SKU003", 112)
    assert one.upper_hours_to_dispatch == one.est_hours_to_dispatch + trained_model.upper_bound.margin_hours
    assert trained_model.upper_bound.margin_hours > 0


def test_a_request_outside_the_trained_range_is_extrapolated_and_not_extended(trained_model: Model) -> None:
    trained = trained_model.trained_range("SKU002")
    above = trained_model.estimate_one("SKU002", trained.highest + 50)
    at_edge = trained_model.estimate_one("SKU002", trained.highest)

    assert above.extrapolated and not at_edge.extrapolated
    assert above.est_hours_to_dispatch == at_edge.est_hours_to_dispatch
    assert trained_model.estimate_one("SKU002", trained.lowest).extrapolated is False


def test_predict_one_rejects_an_unknown_product(trained_model: Model) -> None:
    with pytest.raises(UnknownProductCodeError, match="unknown product code 'SKU999'"):
        trained_model.predict_one("SKU999", 10)
    with pytest.raises(UnknownProductCodeError, match="unknown product code 'SKU999'"):
        trained_model.estimate_one("SKU999", 10)


def test_model_version_names_the_artefact_and_its_lineage(trained_model: Model) -> None:
    version = str(trained_model)

    assert version.startswith("time-to-dispatch:")
    assert trained_model.artefact_id in version
    assert f"sha256={trained_model.model_hash[:12]}" in version
    assert f"data={trained_model.dataset.key}@{trained_model.dataset.etag}" in version
    assert trained_model.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ") in version


def test_model_hash_is_the_hash_of_the_fitted_estimator(trained_model: Model) -> None:
    assert trained_model.model_hash == estimator_hash(trained_model.estimator)
    assert len(trained_model.model_hash) == 64


def test_model_pickles_without_its_prediction_cache(trained_model: Model) -> None:
    trained_model.predict_one("SKU001", 10)

    clone = pickle.loads(pickle.dumps(trained_model))

    assert clone._walker is None
    assert clone.predict_one("SKU001", 10) == trained_model.predict_one("SKU001", 10)


def test_lineage_is_json_ready_and_complete(trained_model: Model) -> None:
    import json

    lineage = json.loads(json.dumps(trained_model.lineage()))

    assert lineage["model_version"] == str(trained_model)
    assert lineage["dataset"]["key"] == trained_model.dataset.key
    assert lineage["dataset"]["etag"] == trained_model.dataset.etag
    assert lineage["metrics"]["r_squared"] == trained_model.metrics.r_squared
    assert lineage["hyperparameters"] == trained_model.hyperparameters
    assert lineage["product_codes"] == list(trained_model.encoding.codes)
    assert lineage["git_commit"] == trained_model.git_commit
    assert trained_model.tree_metrics is not None
    assert lineage["tree_metrics"]["mean_absolute_error"] == trained_model.tree_metrics.mean_absolute_error
    assert lineage["upper_bound"]["coverage"] == 0.9
    assert set(lineage["calibration"]["per_product"]) == set(trained_model.product_codes)
    assert lineage["trained_ranges"]["SKU001"] == [trained_model.trained_range("SKU001").lowest,
                                                   trained_model.trained_range("SKU001").highest]
    assert lineage["served_monotonicity"]["total_decreasing_steps"] == 0
    assert set(lineage["monotonicity"]["per_product"]) == set(trained_model.encoding.codes)


def test_model_requires_an_aware_creation_time(trained_model: Model) -> None:
    from datetime import datetime

    with pytest.raises(ValueError, match="timezone-aware"):
        Model(trained_model.estimator, trained_model.encoding, trained_model.dataset, trained_model.metrics,
              trained_model.hyperparameters, trained_model.monotonicity, "abc", created_at=datetime(2026, 1, 1))
