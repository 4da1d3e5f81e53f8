"""The hyper-parameter search: the data scientist's 5-fold grid search on r², made cheaper.

It picks exactly what `GridSearchCV(DecisionTreeRegressor(random_state=42), grid, cv=5,
scoring="r2")` picks on the same data (a test compares them), but cross-validates each
distinct tree only once and spreads the fits over worker processes when the data is large
enough for that to pay (see docs/benchmarks.md, "Train stage").
"""
import logging
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold, ParameterGrid
from sklearn.tree import DecisionTreeRegressor
from sklearn.utils.parallel import Parallel, delayed

from pipeline.settings import TRAIN

HYPERPARAM_GRID: Dict[str, List[Any]] = {
    "criterion": ["squared_error", "absolute_error"],
    "max_depth": [2, 4, 6, 8, 10, None],
    "min_samples_split": [2, 4, 6, 8, 10],
    "min_samples_leaf": [2, 4, 6, 8, 10],
}

log = logging.getLogger(__name__)


class SearchResult(NamedTuple):
    """The tuned estimator, refitted on all the training data, and how it was chosen."""

    estimator: DecisionTreeRegressor
    best_params: Dict[str, Any]
    best_cv_r_squared: float
    cv_results: Dict[str, Any]


def choose_n_jobs(n_train_rows: int, n_jobs: Optional[int] = None) -> int:
    """Worker processes for the search: as asked, else 1 for small data and all cores for big."""
    if n_jobs is not None:
        if n_jobs == 0 or n_jobs < -1:
            raise ValueError(f"n_jobs must be a positive number of processes or -1, got {n_jobs}")
        return n_jobs
    return -1 if n_train_rows >= TRAIN.parallel_min_train_rows else 1


def tune_hyperparameters(
    X_train: np.ndarray,
    y_train: np.ndarray,
    grid: Dict[str, List[Any]],
    n_jobs: Optional[int] = None,
) -> SearchResult:
    """5-fold grid search on r², returning the same choice as a plain `GridSearchCV`.

    In a tree, a node is split only when it has at least
    `max(min_samples_split, 2 * min_samples_leaf)` samples, so grid points that agree on that
    value (and on everything else) grow identical trees. Each such group is cross-validated
    once and its scores are shared by all its members; the best is then the first grid point
    in `ParameterGrid` order with the best mean score, which is how `GridSearchCV` breaks ties.
    Each fit is made as `GridSearchCV` makes it (same unshuffled folds, same seed, r² on the
    held-out fold), in the same order, by a pool of `n_jobs` processes; a long search logs how
    many fits are done, at most every `TRAIN.progress_interval_seconds` seconds.

    Raises:
        ValueError: if the grid is empty or malformed, or the tree rejects one of its values.
    """
    try:
        candidates = list(ParameterGrid(grid))
    except (TypeError, ValueError) as error:
        raise ValueError(f"invalid hyper-parameter grid: {error}") from None
    if not candidates:
        raise ValueError("the hyper-parameter grid is empty")
    groups: Dict[Any, List[int]] = {}
    for i, params in enumerate(candidates):
        groups.setdefault(_equivalence_key(params), []).append(i)
    representatives = [candidates[members[0]] for members in groups.values()]
    workers = choose_n_jobs(len(y_train), n_jobs)
    log.info(
        f"grid search: {len(candidates)} candidates, {len(representatives)} distinct trees, "
        f"{TRAIN.cv_folds}-fold CV on {len(y_train)} rows, n_jobs={workers}"
    )
    started = time.perf_counter()
    splits = list(KFold(n_splits=TRAIN.cv_folds).split(X_train))
    fold_scores = np.empty((len(representatives), TRAIN.cv_folds))
    fits = Parallel(n_jobs=workers, return_as="generator_unordered")(
        delayed(_fit_and_score)(tree, fold, params, X_train, y_train, train, test)
        for tree, params in enumerate(representatives)
        for fold, (train, test) in enumerate(splits)
    )
    total = fold_scores.size
    last_report = started
    for done, (tree, fold, score) in enumerate(fits, start=1):
        fold_scores[tree, fold] = score
        now = time.perf_counter()
        if done < total and now - last_report >= TRAIN.progress_interval_seconds:
            log.info(f"grid search: {done} of {total} fits done ({100 * done // total}%), {now - started:.0f}s so far")
            last_report = now
    mean_scores = np.empty(len(candidates))
    for members, score in zip(groups.values(), fold_scores.mean(axis=1)):
        mean_scores[members] = score
    best_index = int(np.flatnonzero(mean_scores == np.nanmax(mean_scores))[0])
    best_params = candidates[best_index]
    estimator = DecisionTreeRegressor(random_state=TRAIN.random_state, **best_params).fit(X_train, y_train)
    log.info(
        f"grid search done in {time.perf_counter() - started:.1f}s; best parameters {best_params} "
        f"(mean CV r² {mean_scores[best_index]:.4f})"
    )
    return SearchResult(
        estimator,
        best_params,
        float(mean_scores[best_index]),
        {"params": candidates, "mean_test_score": mean_scores},
    )


def _fit_and_score(
    tree: int, fold: int, params: Dict[str, Any], X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray
) -> Tuple[int, int, float]:
    """One fit of the search, as `GridSearchCV` makes it: the fold's r² of a tree with `params`."""
    try:
        estimator = DecisionTreeRegressor(random_state=TRAIN.random_state, **params).fit(X[train], y[train])
    except (TypeError, ValueError) as error:
        raise ValueError(f"invalid hyper-parameters {params}: {error}") from None
    return tree, fold, float(r2_score(y[test], estimator.predict(X[test])))


def _equivalence_key(params: Dict[str, Any]) -> Any:
    leaf = params.get("min_samples_leaf", 1)
    split = params.get("min_samples_split", 2)
    rest = tuple(sorted((k, repr(v)) for k, v in params.items() if k not in ("min_samples_split",)))
    if isinstance(leaf, int) and isinstance(split, int):
        return rest + (("effective_min_samples_split", max(split, 2 * leaf)),)
    return rest + (("min_samples_split", repr(split)),)
