"""Train stage: newest dataset in, validated and versioned model out.

Usage: python -m pipeline.train_model S3_BUCKET R2_ERROR_THRESHOLD R2_WARNING_THRESHOLD
       [--n-jobs N]

Bodywork runs it as `python train_model.py ARGS` from `pipeline/` with the repository root on
PYTHONPATH. Exit code 0: a model was persisted. Exit code 1: nothing was persisted, and one
ERROR line says why (bad arguments, S3, bad data, failed logic checks, r² below the error
threshold). The newest model in the bucket is then still the one that was there before.
"""
import argparse
import logging
import math
import os
import sys
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.model_selection import KFold, ParameterGrid, train_test_split
from sklearn.tree import DecisionTreeRegressor
from sklearn.utils.parallel import Parallel, delayed

from pipeline.features import (
    DATASET_COLUMNS,
    LABEL_COLUMN,
    ORDERS_COLUMN,
    PRODUCT_COLUMN,
    ProductCodeEncoding,
    encode_features,
)
from pipeline.model import (
    DatasetLineage,
    Model,
    MonotonicityReport,
    ProductMonotonicity,
    TaskMetrics,
)
from pipeline.storage import Dataset, StorageError, get_latest_dataset, put_model
from pipeline.utils import StageArgumentParser, configure_logger

HYPERPARAM_GRID: Dict[str, List[Any]] = {
    "criterion": ["squared_error", "absolute_error"],
    "max_depth": [2, 4, 6, 8, 10, None],
    "min_samples_split": [2, 4, 6, 8, 10],
    "min_samples_leaf": [2, 4, 6, 8, 10],
}
TEST_SIZE = 0.2
RANDOM_STATE = 42
CV_FOLDS = 5
# Each product needs enough rows for a stratified 80/20 split that leaves every fold of the
# 5-fold search some of its rows to learn from.
MIN_ROWS_PER_PRODUCT = 10
# Below this many training rows a pool of worker processes costs more to start than it
# saves; from it on, use every core. Measured on 2 cores with `PYTHONPATH=. python
# benchmarks/train_benchmark.py --rows --memory-rows --repeats 5 --crossover-rows 1000 1500
# 2000 2500 3000 4000` (median seconds, one process / two): 800 training rows (a 1,000-row
# week) 1.49 / 1.71, 1200 rows 2.50 / 2.17, 1600 rows 3.59 / 3.00, 3200 rows 10.31 / 6.22
# (and 8000 rows 53.7 / 28.3 in the run before). See benchmarks/results/train.txt.
PARALLEL_MIN_TRAIN_ROWS = 1200
# A long search logs how many of its fits are done at most this often (a 100,000-row week
# searches for well over half an hour).
PROGRESS_INTERVAL_S = 30.0
# The logic checks: estimates must rise from 100 to 150 orders, and stay within reason.
CHECK_ORDERS_LOW, CHECK_ORDERS_HIGH = 100, 150
MAX_ESTIMATE_TO_LABEL_RATIO = 1.25
USAGE = (
    "usage: python -m pipeline.train_model S3_BUCKET R2_ERROR_THRESHOLD R2_WARNING_THRESHOLD "
    "[--n-jobs N] (thresholds are numbers in (0, 1])"
)

log = logging.getLogger(__name__)


class DatasetError(ValueError):
    """The dataset cannot be trained on."""


class ModelValidationError(ValueError):
    """The trained model failed its logic checks or the r² error threshold."""


class PreparedData(NamedTuple):
    """The train/test split, encoded, with what it was made from."""

    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    encoding: ProductCodeEncoding
    rows_per_product: Dict[str, int]
    max_orders_placed: int


class SearchResult(NamedTuple):
    """The tuned estimator, refitted on all the training data, and how it was chosen."""

    estimator: DecisionTreeRegressor
    best_params: Dict[str, Any]
    best_cv_r_squared: float
    cv_results: Dict[str, Any]


def main(
    bucket: str,
    error_threshold: float,
    warning_threshold: float,
    hyperparam_grid: Optional[Dict[str, List[Any]]] = None,
    n_jobs: Optional[int] = None,
) -> Model:
    """Train on the newest dataset in the bucket and persist the model if it is good enough.

    Raises:
        StorageError: S3 failed or holds no usable dataset.
        DatasetError: the dataset cannot be trained on.
        ModelValidationError: logic checks failed or r² is below the error threshold.
    """
    check_thresholds_valid(error_threshold, warning_threshold)
    dataset = get_latest_dataset(bucket)
    log.info(f"training on {dataset.uri} (ETag {dataset.etag}, version {dataset.version_id})")
    data = prepare_data(dataset.data)
    grid = hyperparam_grid or HYPERPARAM_GRID
    search = tune_hyperparameters(data.X_train, data.y_train, grid, n_jobs)
    metrics = evaluate(search.estimator, data)
    check_model_logic(search.estimator, data)
    check_r_squared(metrics, error_threshold, warning_threshold)
    model = build_model(search, data, metrics, dataset)
    key = put_model(bucket, model)
    log.info(f"persisted model {model} to s3://{bucket}/{key}")
    return model


def check_thresholds_valid(error_threshold: float, warning_threshold: float) -> None:
    """Thresholds must be r² values in (0, 1]; say once if the warning can never fire.

    Raises:
        ValueError: naming the threshold that is out of range.
    """
    for name, value in (("R2_ERROR_THRESHOLD", error_threshold), ("R2_WARNING_THRESHOLD", warning_threshold)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= 1):
            raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    if warning_threshold <= error_threshold:
        log.info(
            f"R2_WARNING_THRESHOLD ({warning_threshold}) is not above R2_ERROR_THRESHOLD "
            f"({error_threshold}): no drift warning can fire, only the error threshold applies"
        )


def validate_dataset(data: pd.DataFrame) -> pd.DataFrame:
    """Check a raw dataset can be trained on and return its three columns, typed.

    Every problem found is reported together.

    Raises:
        DatasetError: missing columns, non-numeric, negative or missing `orders_placed`,
            missing or non-numeric labels, missing product codes, or a product with fewer
            than MIN_ROWS_PER_PRODUCT rows.
    """
    missing = [column for column in DATASET_COLUMNS if column not in data.columns]
    if missing:
        raise DatasetError(
            f"missing column(s) {', '.join(missing)}; expected {', '.join(DATASET_COLUMNS)}, "
            f"got {', '.join(map(str, data.columns)) or 'none'}"
        )
    if data.empty:
        raise DatasetError("the dataset has no rows")
    problems: List[str] = []
    orders = pd.to_numeric(data[ORDERS_COLUMN], errors="coerce")
    labels = pd.to_numeric(data[LABEL_COLUMN], errors="coerce")
    codes = data[PRODUCT_COLUMN]
    _report(problems, data[ORDERS_COLUMN].notna() & orders.isna(), f"non-numeric {ORDERS_COLUMN}",
            data[ORDERS_COLUMN])
    _report(problems, data[ORDERS_COLUMN].isna(), f"missing {ORDERS_COLUMN}")
    _report(problems, np.isinf(orders), f"infinite {ORDERS_COLUMN}", orders)
    _report(problems, orders < 0, f"negative {ORDERS_COLUMN}", orders)
    _report(problems, data[LABEL_COLUMN].notna() & labels.isna(), f"non-numeric {LABEL_COLUMN}",
            data[LABEL_COLUMN])
    _report(problems, data[LABEL_COLUMN].isna(), f"missing {LABEL_COLUMN} (label)")
    _report(problems, np.isinf(labels), f"infinite {LABEL_COLUMN}", labels)
    _report(problems, labels < 0, f"negative {LABEL_COLUMN}", labels)
    blank_codes = codes.isna() | (codes.astype(str).str.strip() == "")
    _report(problems, blank_codes, f"missing {PRODUCT_COLUMN}")
    if not problems:
        counts = codes.astype(str).str.strip().value_counts().to_dict()
        few = {code: n for code, n in counts.items() if n < MIN_ROWS_PER_PRODUCT}
        if few:
            problems.append(
                "too few rows for product(s) "
                + ", ".join(f"{code} ({n})" for code, n in sorted(few.items()))
                + f"; each product needs at least {MIN_ROWS_PER_PRODUCT}"
            )
    if problems:
        raise DatasetError("; ".join(problems))
    return pd.DataFrame(
        {
            LABEL_COLUMN: labels.astype(np.float64),
            ORDERS_COLUMN: orders.astype(np.float64),
            PRODUCT_COLUMN: codes.astype(str).str.strip(),
        }
    )


def prepare_data(raw: pd.DataFrame) -> PreparedData:
    """Validate, learn the product-code encoding and split 80/20 stratified by product.

    Raises:
        DatasetError: as `validate_dataset`.
    """
    data = validate_dataset(raw)
    rows_per_product = {str(k): int(v) for k, v in sorted(data[PRODUCT_COLUMN].value_counts().items())}
    log.info(f"{len(data)} rows; rows per product: {rows_per_product}")
    encoding = ProductCodeEncoding.fit(data[PRODUCT_COLUMN])
    features = encode_features(data[ORDERS_COLUMN].to_numpy(), data[PRODUCT_COLUMN].tolist(), encoding)
    X_train, X_test, y_train, y_test = train_test_split(
        features,
        data[LABEL_COLUMN].to_numpy(),
        test_size=TEST_SIZE,
        stratify=data[PRODUCT_COLUMN],
        random_state=RANDOM_STATE,
    )
    return PreparedData(
        X_train, X_test, y_train, y_test, encoding, rows_per_product,
        int(math.floor(data[ORDERS_COLUMN].max())),
    )


def choose_n_jobs(n_train_rows: int, n_jobs: Optional[int] = None) -> int:
    """Worker processes for the search: as asked, else 1 for small data and all cores for big."""
    if n_jobs is not None:
        if n_jobs == 0 or n_jobs < -1:
            raise ValueError(f"n_jobs must be a positive number of processes or -1, got {n_jobs}")
        return n_jobs
    return -1 if n_train_rows >= PARALLEL_MIN_TRAIN_ROWS else 1


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
    many fits are done, at most every `PROGRESS_INTERVAL_S` seconds.

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
        f"{CV_FOLDS}-fold CV on {len(y_train)} rows, n_jobs={workers}"
    )
    started = time.perf_counter()
    splits = list(KFold(n_splits=CV_FOLDS).split(X_train))
    fold_scores = np.empty((len(representatives), CV_FOLDS))
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
        if done < total and now - last_report >= PROGRESS_INTERVAL_S:
            log.info(f"grid search: {done} of {total} fits done ({100 * done // total}%), {now - started:.0f}s so far")
            last_report = now
    mean_scores = np.empty(len(candidates))
    for members, score in zip(groups.values(), fold_scores.mean(axis=1)):
        mean_scores[members] = score
    best_index = int(np.flatnonzero(mean_scores == np.nanmax(mean_scores))[0])
    best_params = candidates[best_index]
    estimator = DecisionTreeRegressor(random_state=RANDOM_STATE, **best_params).fit(X_train, y_train)
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


def evaluate(estimator: DecisionTreeRegressor, data: PreparedData) -> TaskMetrics:
    """r² and mean absolute error on the test split."""
    predictions = estimator.predict(data.X_test)
    metrics = TaskMetrics(
        r_squared=float(r2_score(data.y_test, predictions)),
        mean_absolute_error=float(mean_absolute_error(data.y_test, predictions)),
        n_train=len(data.y_train),
        n_test=len(data.y_test),
    )
    log.info(
        f"test metrics: r²={metrics.r_squared:.4f}, MAE={metrics.mean_absolute_error:.4f} hours "
        f"({metrics.n_test} test rows)"
    )
    return metrics


def check_model_logic(estimator: DecisionTreeRegressor, data: PreparedData) -> None:
    """The three checks a model must pass before it is persisted, reported together.

    - every product: a strictly higher estimate at 150 orders than at 100;
    - no negative estimate on the test set;
    - no estimate on the test set above 1.25 times the largest test label.

    Raises:
        ModelValidationError: listing every failed check.
    """
    failures: List[str] = []
    codes = list(data.encoding.codes)
    low = estimator.predict(encode_features([CHECK_ORDERS_LOW] * len(codes), codes, data.encoding))
    high = estimator.predict(encode_features([CHECK_ORDERS_HIGH] * len(codes), codes, data.encoding))
    for code, at_low, at_high in zip(codes, low, high):
        if not at_high > at_low:
            failures.append(
                f"{code}: estimate at {CHECK_ORDERS_HIGH} orders ({at_high:.3f}h) is not above "
                f"the estimate at {CHECK_ORDERS_LOW} orders ({at_low:.3f}h)"
            )
    test_predictions = estimator.predict(data.X_test)
    negative = int((test_predictions < 0).sum())
    if negative:
        failures.append(
            f"{negative} negative estimate(s) on the test set (lowest {test_predictions.min():.3f}h)"
        )
    ceiling = MAX_ESTIMATE_TO_LABEL_RATIO * float(np.max(data.y_test))
    too_high = int((test_predictions > ceiling).sum())
    if too_high:
        failures.append(
            f"{too_high} estimate(s) on the test set above {MAX_ESTIMATE_TO_LABEL_RATIO} x the "
            f"largest test label ({ceiling:.3f}h; highest estimate {test_predictions.max():.3f}h)"
        )
    if failures:
        raise ModelValidationError("model failed its logic checks: " + "; ".join(failures))
    log.info("logic checks passed: estimates rise from 100 to 150 orders, none negative or too high")


def check_r_squared(metrics: TaskMetrics, error_threshold: float, warning_threshold: float) -> None:
    """Apply the r² thresholds.

    Raises:
        ModelValidationError: r² below the error threshold (nothing must be persisted).
    """
    r_squared = metrics.r_squared
    if r_squared < error_threshold:
        raise ModelValidationError(
            f"test r² {r_squared:.4f} is below the error threshold {error_threshold}; "
            "no model persisted"
        )
    if r_squared < warning_threshold:
        log.warning(
            f"test r² {r_squared:.4f} is below the warning threshold {warning_threshold} "
            f"(error threshold {error_threshold}): this suggests drift in the data; "
            "the model is persisted, but look into it"
        )


def measure_monotonicity(estimator: DecisionTreeRegressor, data: PreparedData) -> MonotonicityReport:
    """Count, per product, the whole-order steps where the estimate falls, and the largest fall."""
    orders = np.arange(0, data.max_orders_placed + 1, dtype=np.float64)
    per_product: Dict[str, ProductMonotonicity] = {}
    for code in data.encoding.codes:
        estimates = estimator.predict(encode_features(orders, [code] * len(orders), data.encoding))
        drops = -np.diff(estimates)
        falling = drops[drops > 0]
        per_product[code] = ProductMonotonicity(
            decreasing_steps=int(falling.size),
            largest_drop_hours=float(falling.max()) if falling.size else 0.0,
        )
    report = MonotonicityReport(data.max_orders_placed, per_product)
    log.info(
        f"monotonicity over 0..{data.max_orders_placed} orders: {report.total_decreasing_steps} "
        f"decreasing step(s), largest drop {report.largest_drop_hours:.3f}h; per product "
        + ", ".join(f"{c}: {p.decreasing_steps}" for c, p in per_product.items())
    )
    return report


def build_model(
    search: SearchResult, data: PreparedData, metrics: TaskMetrics, dataset: Dataset
) -> Model:
    """Wrap the estimator with its lineage."""
    return Model(
        estimator=search.estimator,
        encoding=data.encoding,
        dataset=DatasetLineage(
            dataset.bucket, dataset.key, dataset.timestamp, dataset.etag, dataset.version_id
        ),
        metrics=metrics,
        hyperparameters=dict(search.best_params),
        monotonicity=measure_monotonicity(search.estimator, data),
        git_commit=os.environ.get("GIT_COMMIT_HASH", "unknown"),
    )


def _fit_and_score(
    tree: int, fold: int, params: Dict[str, Any], X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray
) -> Tuple[int, int, float]:
    """One fit of the search, as `GridSearchCV` makes it: the fold's r² of a tree with `params`."""
    try:
        estimator = DecisionTreeRegressor(random_state=RANDOM_STATE, **params).fit(X[train], y[train])
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


def _report(
    problems: List[str], mask: "pd.Series[bool]", what: str, values: "Optional[pd.Series[Any]]" = None
) -> None:
    mask = mask.fillna(False).astype(bool)
    count = int(mask.sum())
    if count:
        rows = ", ".join(str(i + 2) for i in np.flatnonzero(mask.to_numpy())[:5])
        example = f" (e.g. {values[mask].iloc[0]!r})" if values is not None else ""
        more = "..." if count > 5 else ""
        problems.append(f"{count} row(s) with {what}{example} at CSV line(s) {rows}{more}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the CLI arguments.

    Raises:
        ValueError: with the reason, for any bad argument.
    """
    parser = StageArgumentParser(prog="train_model.py")
    parser.add_argument("error_threshold", type=float)
    parser.add_argument("warning_threshold", type=float)
    parser.add_argument("--n-jobs", type=int, default=None)
    args = parser.parse_stage_args(argv)
    for name in ("error_threshold", "warning_threshold"):
        value = getattr(args, name)
        if not (math.isfinite(value) and 0 < value <= 1):
            raise ValueError(f"R2_{name.split('_')[0].upper()}_THRESHOLD must be in (0, 1], got {value}")
    return args


if __name__ == "__main__":
    configure_logger()
    try:
        arguments = parse_args(sys.argv[1:])
    except ValueError as error:
        log.error(f"Invalid arguments passed to train_model.py: {error}; {USAGE}")
        sys.exit(1)
    try:
        main(
            arguments.bucket, arguments.error_threshold, arguments.warning_threshold,
            n_jobs=arguments.n_jobs,
        )
    except (StorageError, DatasetError, ModelValidationError, ValueError) as error:
        log.error(f"train_model failed: {error}")
        sys.exit(1)
    except Exception as error:  # the one ERROR line must also cover the unforeseen
        log.error(f"train_model failed unexpectedly: {error!r}")
        sys.exit(1)
