"""The model artefact: predictions, version string, hash, pickling and lineage."""
import pickle

import numpy as np
import pytest

from pipeline.artefact.features import UnknownProductCodeError, encode_features
from pipeline.artefact.model import Model, estimator_hash


def test_predict_one_equals_the_estimators_predict_for_every_product(trained_model: Model) -> None:
    orders = list(np.linspace(0, 400, 801)) + [99.99999, 100.0000001, 1e6, 0.0, 152.5, 1e-30]
    for code in trained_model.product_codes:
        expected = trained_model.estimator.predict(encode_features(orders, [code] * len(orders),
                                                                   trained_model.encoding))
        actual = [trained_model.predict_one(code, value) for value in orders]
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-9)


def test_predict_one_rejects_an_unknown_product(trained_model: Model) -> None:
    with pytest.raises(UnknownProductCodeError, match="unknown product code 'SKU999'"):
        trained_model.predict_one("SKU999", 10)


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
    assert set(lineage["monotonicity"]["per_product"]) == set(trained_model.encoding.codes)


def test_model_requires_an_aware_creation_time(trained_model: Model) -> None:
    from datetime import datetime

    with pytest.raises(ValueError, match="timezone-aware"):
        Model(trained_model.estimator, trained_model.encoding, trained_model.dataset, trained_model.metrics,
              trained_model.hyperparameters, trained_model.monotonicity, "abc", created_at=datetime(2026, 1, 1))
