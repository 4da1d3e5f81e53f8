"""The grid search: the same choice as a plain GridSearchCV, cheaper, with progress lines."""
import logging
from dataclasses import replace
from typing import Any, Dict, List

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, ParameterGrid
from sklearn.tree import DecisionTreeRegressor

from pipeline.local.synthetic import generate_orders
from pipeline.settings import TRAIN
from pipeline.train import steps, tuning


# --- tune_hyperparameters -------------------------------------------------------------------

SMALL_GRID: Dict[str, List[Any]] = {
    "criterion": ["squared_error", "absolute_error"],
    "max_depth": [3, None],
    "min_samples_split": [2, 4, 10],
    "min_samples_leaf": [2, 4, 6],
}


def test_tune_hyperparameters_chooses_what_a_plain_grid_search_chooses() -> None:
    data = steps.prepare_data(generate_orders(400, seed=11))
    plain = GridSearchCV(DecisionTreeRegressor(random_state=42), SMALL_GRID, cv=5, scoring="r2").fit(
        data.X_train, data.y_train
    )

    ours = tuning.tune_hyperparameters(data.X_train, data.y_train, SMALL_GRID, n_jobs=1)

    assert ours.best_params == plain.best_params_
    np.testing.assert_allclose(ours.cv_results["mean_test_score"], plain.cv_results_["mean_test_score"], rtol=0,
                               atol=1e-12)
    assert ours.best_cv_r_squared == pytest.approx(plain.best_score_, abs=1e-12)


def test_tune_hyperparameters_refits_the_best_tree_on_all_training_rows() -> None:
    data = steps.prepare_data(generate_orders(400, seed=11))

    ours = tuning.tune_hyperparameters(data.X_train, data.y_train, SMALL_GRID, n_jobs=1)

    reference = DecisionTreeRegressor(random_state=42, **ours.best_params).fit(data.X_train, data.y_train)
    np.testing.assert_array_equal(ours.estimator.predict(data.X_test), reference.predict(data.X_test))


def test_tune_hyperparameters_gives_the_same_choice_with_two_processes() -> None:
    data = steps.prepare_data(generate_orders(400, seed=11))

    serial = tuning.tune_hyperparameters(data.X_train, data.y_train, SMALL_GRID, n_jobs=1)
    parallel = tuning.tune_hyperparameters(data.X_train, data.y_train, SMALL_GRID, n_jobs=2)

    assert parallel.best_params == serial.best_params
    np.testing.assert_array_equal(parallel.cv_results["mean_test_score"], serial.cv_results["mean_test_score"])


def test_a_long_search_logs_its_progress_in_fits_done(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data = steps.prepare_data(generate_orders(400, seed=11))
    monkeypatch.setattr(tuning, "TRAIN", replace(TRAIN, progress_interval_seconds=0.0))

    with caplog.at_level(logging.INFO, logger=tuning.log.name):
        tuning.tune_hyperparameters(data.X_train, data.y_train, SMALL_GRID, n_jobs=2)

    messages = [record.getMessage() for record in caplog.records]
    progress = [m for m in messages if "fits done" in m]
    distinct_trees = len({tuning._equivalence_key(p) for p in ParameterGrid(SMALL_GRID)})
    total = distinct_trees * TRAIN.cv_folds
    assert progress == [
        f"grid search: {done} of {total} fits done ({100 * done // total}%), {m.rsplit(', ', 1)[1]}"
        for done, m in zip(range(1, total), progress)
    ]
    assert len(progress) == total - 1
    assert messages.index(progress[-1]) < next(i for i, m in enumerate(messages) if m.startswith("grid search done"))


def test_a_short_search_logs_only_its_start_and_its_result(caplog: pytest.LogCaptureFixture) -> None:
    data = steps.prepare_data(generate_orders(400, seed=11))

    with caplog.at_level(logging.INFO, logger=tuning.log.name):
        tuning.tune_hyperparameters(data.X_train, data.y_train, SMALL_GRID, n_jobs=1)

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("grid search: ") and messages[1].startswith("grid search done in ")


def test_tune_hyperparameters_names_a_value_the_tree_rejects() -> None:
    data = steps.prepare_data(generate_orders(400, seed=11))

    with pytest.raises(ValueError, match=r"invalid hyper-parameters \{'max_depth': -1\}: .*max_depth"):
        tuning.tune_hyperparameters(data.X_train, data.y_train, {"max_depth": [-1]}, n_jobs=1)


def test_grid_points_that_grow_the_same_tree_share_one_group() -> None:
    same = [
        tuning._equivalence_key({"criterion": "squared_error", "max_depth": 4, "min_samples_leaf": 4,
                                "min_samples_split": split})
        for split in (2, 4, 6, 8)
    ]
    different = tuning._equivalence_key(
        {"criterion": "squared_error", "max_depth": 4, "min_samples_leaf": 4, "min_samples_split": 10}
    )

    assert len(set(same)) == 1
    assert different != same[0]


def test_tune_hyperparameters_rejects_a_grid_with_an_empty_list_naming_it() -> None:
    with pytest.raises(ValueError, match="invalid hyper-parameter grid: .*'max_depth'"):
        tuning.tune_hyperparameters(np.zeros((10, 2)), np.zeros(10), {"max_depth": []})


@pytest.mark.parametrize("rows, expected", [(800, 1), (TRAIN.parallel_min_train_rows, -1), (80_000, -1)])
def test_choose_n_jobs_by_training_rows(rows: int, expected: int) -> None:
    assert tuning.choose_n_jobs(rows) == expected


def test_choose_n_jobs_respects_an_explicit_choice_and_rejects_zero() -> None:
    assert tuning.choose_n_jobs(800, 2) == 2
    with pytest.raises(ValueError, match="n_jobs"):
        tuning.choose_n_jobs(800, 0)
