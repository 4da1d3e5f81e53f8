"""The train stage's steps: validate and split the data, evaluate, check and describe the model.

Each step takes data and returns data (or raises); `stage.train` calls them in order, and the
grid search lives in `tuning.py`.
"""
import logging
import math
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import pandas as pd
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeRegressor

from pipeline.artefact.calibration import Calibration, TrainedRange, UpperBound
from pipeline.artefact.features import (
    DATASET_COLUMNS,
    LABEL_COLUMN,
    ORDERS_COLUMN,
    PRODUCT_COLUMN,
    ProductCodeEncoding,
    encode_features,
)
from pipeline.artefact.model import (
    DatasetLineage,
    Model,
    MonotonicityReport,
    ProductMonotonicity,
    TaskMetrics,
    check_model_structure,
)
from pipeline.settings import ARTEFACT, ENVIRONMENT, MESSAGES, TRAIN, environment_value
from pipeline.storage.datasets import Dataset
from pipeline.utils import listed, quote


log = logging.getLogger(__name__)

# TRAIN.product_code_pattern in words, for the error that refuses a code outside it.
PRODUCT_CODE_CHARACTERS = "ASCII letters, digits, '.', '_', '-', '/'"


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
            than TRAIN.min_rows_per_product rows; `orders_placed` above
            ARTEFACT.max_trained_orders_placed (a model trained on it could never be served), or a
            product code longer than TRAIN.max_product_code_chars or with a character outside
            TRAIN.product_code_pattern (spaces around a code are trimmed first). A message names
            at most MESSAGES.max_codes_named codes or columns and counts the rest; each value it
            quotes is cut short (`quote`).
    """
    missing = [column for column in DATASET_COLUMNS if column not in data.columns]
    if missing:
        got = listed([quote(str(column)) for column in data.columns[:MESSAGES.max_codes_named]],
                     total=len(data.columns))
        raise DatasetError(
            f"missing column(s) {', '.join(missing)}; expected {', '.join(DATASET_COLUMNS)}, got {got or 'none'}"
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
    _report(problems, orders > ARTEFACT.max_trained_orders_placed,
            f"{ORDERS_COLUMN} above {ARTEFACT.max_trained_orders_placed:,}",
            orders)
    _report(problems, data[LABEL_COLUMN].notna() & labels.isna(), f"non-numeric {LABEL_COLUMN}",
            data[LABEL_COLUMN])
    _report(problems, data[LABEL_COLUMN].isna(), f"missing {LABEL_COLUMN} (label)")
    _report(problems, np.isinf(labels), f"infinite {LABEL_COLUMN}", labels)
    _report(problems, labels < 0, f"negative {LABEL_COLUMN}", labels)
    blank_codes = codes.isna() | (codes.astype(str).str.strip() == "")
    _report(problems, blank_codes, f"missing {PRODUCT_COLUMN}")
    trimmed = codes.astype(str).str.strip()
    too_long = ~blank_codes & (trimmed.str.len() > TRAIN.max_product_code_chars)
    _report(problems, too_long, f"{PRODUCT_COLUMN} longer than {TRAIN.max_product_code_chars} characters", trimmed)
    _report(problems, ~blank_codes & ~too_long & ~trimmed.str.fullmatch(TRAIN.product_code_pattern).astype(bool),
            f"{PRODUCT_COLUMN} outside the allowed characters ({PRODUCT_CODE_CHARACTERS})", trimmed)
    if not problems:
        warn_about_lookalike_codes(codes.astype(str))
        counts = trimmed.value_counts().to_dict()
        few = sorted((code, n) for code, n in counts.items() if n < TRAIN.min_rows_per_product)
        if few:
            problems.append(
                "too few rows for product(s) "
                + listed([f"{code} ({n})" for code, n in few[:MESSAGES.max_codes_named]], total=len(few))
                + f"; each product needs at least {TRAIN.min_rows_per_product}"
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


def warn_about_lookalike_codes(codes: "pd.Series[Any]") -> None:
    """One WARNING per group of product codes that differ only in case or surrounding spaces.

    Surrounding spaces are trimmed (`" SKU002"` trains as `SKU002`), case is kept (`sku002`
    and `SKU002` stay two codes); either way it is likely a typo in the data worth a look.
    """
    variants = pd.Series(codes.unique())
    counts = codes.value_counts()
    for _, group in variants.groupby(variants.str.strip().str.casefold()):
        if len(group) > 1:
            named = ", ".join(f"{quote(code)} ({counts[code]} rows)" for code in sorted(group)[:5])
            distinct = group.str.strip().nunique()
            log.warning(
                f"product codes that differ only in case or surrounding spaces: {named}; spaces are "
                f"trimmed and case is kept, so they train as {distinct} distinct code(s)"
            )


def prepare_data(raw: pd.DataFrame) -> PreparedData:
    """Validate, learn the product-code encoding and split 80/20 stratified by product.

    Raises:
        DatasetError: as `validate_dataset`.
    """
    data = validate_dataset(raw)
    rows_per_product = {str(k): int(v) for k, v in sorted(data[PRODUCT_COLUMN].value_counts().items())}
    log.info(f"{len(data)} rows; rows per product: {_some_products(rows_per_product)}")
    encoding = ProductCodeEncoding.fit(data[PRODUCT_COLUMN])
    features = encode_features(data[ORDERS_COLUMN].to_numpy(), data[PRODUCT_COLUMN].tolist(), encoding)
    X_train, X_test, y_train, y_test = train_test_split(
        features,
        data[LABEL_COLUMN].to_numpy(),
        test_size=TRAIN.test_size,
        stratify=data[PRODUCT_COLUMN],
        random_state=TRAIN.random_state,
    )
    return PreparedData(
        X_train, X_test, y_train, y_test, encoding, rows_per_product,
        int(math.floor(data[ORDERS_COLUMN].max())),
    )


def evaluate(estimator: Any, data: PreparedData, what: str = "test metrics") -> TaskMetrics:
    """r² and mean absolute error on the test split; `estimator` is anything with the tree's
    `predict` on encoded features (the tree, or the served estimator)."""
    predictions = estimator.predict(data.X_test)
    metrics = TaskMetrics(
        r_squared=float(r2_score(data.y_test, predictions)),
        mean_absolute_error=float(mean_absolute_error(data.y_test, predictions)),
        n_train=len(data.y_train),
        n_test=len(data.y_test),
    )
    log.info(
        f"{what}: r²={metrics.r_squared:.4f}, MAE={metrics.mean_absolute_error:.4f} hours "
        f"({metrics.n_test} test rows)"
    )
    return metrics


def test_rows(data: PreparedData) -> Tuple[np.ndarray, List[str]]:
    """The held-out rows' `orders_placed` and product codes, decoded from the test features."""
    return data.X_test[:, 0].copy(), [data.encoding.codes[int(i)] for i in data.X_test[:, 1]]


def logic_check_failures(estimator: Any, data: PreparedData) -> List[str]:
    """The three checks a model must pass before it is persisted; returns every failure.

    `estimator` is anything with the tree's `predict` on encoded features: the train stage
    passes the served estimator, so the checks judge what is served.

    - every product: a strictly higher estimate at 150 orders than at 100;
    - no negative estimate on the test set;
    - no estimate on the test set above 1.25 times the largest test label.
    """
    failures: List[str] = []
    codes = list(data.encoding.codes)
    low = estimator.predict(encode_features([TRAIN.check_orders_low] * len(codes), codes, data.encoding))
    high = estimator.predict(encode_features([TRAIN.check_orders_high] * len(codes), codes, data.encoding))
    not_rising = [
        f"{code}: estimate at {TRAIN.check_orders_high} orders ({at_high:.3f}h) is not above "
        f"the estimate at {TRAIN.check_orders_low} orders ({at_low:.3f}h)"
        for code, at_low, at_high in zip(codes, low, high) if not at_high > at_low
    ]
    failures += not_rising[:MESSAGES.max_codes_named]
    if len(not_rising) > MESSAGES.max_codes_named:
        failures.append(f"and {len(not_rising) - MESSAGES.max_codes_named} more product(s) whose estimate is not "
                        f"above it at {TRAIN.check_orders_high} orders")
    test_predictions = estimator.predict(data.X_test)
    negative = int((test_predictions < 0).sum())
    if negative:
        failures.append(
            f"{negative} negative estimate(s) on the test set (lowest {test_predictions.min():.3f}h)"
        )
    ceiling = TRAIN.max_estimate_to_label_ratio * float(np.max(data.y_test))
    too_high = int((test_predictions > ceiling).sum())
    if too_high:
        failures.append(
            f"{too_high} estimate(s) on the test set above {TRAIN.max_estimate_to_label_ratio} x the "
            f"largest test label ({ceiling:.3f}h; highest estimate {test_predictions.max():.3f}h)"
        )
    if not failures:
        log.info("logic checks passed: estimates rise from 100 to 150 orders, none negative or too high")
    return failures


def logic_check_headroom(estimator: Any, data: PreparedData) -> Dict[str, float]:
    """How far the model is from failing each logic check (positive: that much room):
    the smallest rise of a product's estimate from check_orders_low to check_orders_high orders,
    the lowest estimate on the test set (above 0), and the room under the test set's ceiling."""
    codes = list(data.encoding.codes)
    low = estimator.predict(encode_features([TRAIN.check_orders_low] * len(codes), codes, data.encoding))
    high = estimator.predict(encode_features([TRAIN.check_orders_high] * len(codes), codes, data.encoding))
    test_predictions = estimator.predict(data.X_test)
    ceiling = TRAIN.max_estimate_to_label_ratio * float(np.max(data.y_test))
    return {
        "logic_headroom.smallest_rise_hours": float(np.min(high - low)),
        "logic_headroom.lowest_estimate_hours": float(np.min(test_predictions)),
        "logic_headroom.below_ceiling_hours": float(ceiling - np.max(test_predictions)),
    }


def check_model_logic(estimator: Any, data: PreparedData) -> None:
    """The logic checks of `logic_check_failures`, as a gate of their own.

    Raises:
        ModelValidationError: listing every failed check.
    """
    failures = logic_check_failures(estimator, data)
    if failures:
        raise ModelValidationError("model failed its logic checks: " + "; ".join(failures))


def r_squared_failure(metrics: TaskMetrics, error_threshold: float, warning_threshold: float) -> Optional[str]:
    """Apply the r² thresholds: the reason the model must not be persisted, or None.

    Below the warning threshold (and not the error threshold) it logs a WARNING that
    suggests drift; the model may still be persisted.
    """
    r_squared = metrics.r_squared
    if r_squared < error_threshold:
        return f"test r² {r_squared:.4f} is below the error threshold {error_threshold}"
    if r_squared < warning_threshold:
        log.warning(
            f"test r² {r_squared:.4f} is below the warning threshold {warning_threshold} "
            f"(error threshold {error_threshold}): this suggests drift in the data; "
            "the model is persisted, but look into it"
        )
    return None


def check_r_squared(metrics: TaskMetrics, error_threshold: float, warning_threshold: float) -> None:
    """The r² thresholds of `r_squared_failure`, as a gate of their own.

    Raises:
        ModelValidationError: r² below the error threshold (nothing must be persisted).
    """
    failure = r_squared_failure(metrics, error_threshold, warning_threshold)
    if failure:
        raise ModelValidationError(f"{failure}; no model persisted")


def measure_monotonicity(estimator: Any, data: PreparedData, step: float = 1.0, beyond: float = 0.0,
                         what: str = "the tree") -> MonotonicityReport:
    """Count, per product, the points where the estimate falls, and the largest fall.

    The points are 0, `step`, 2 `step`, ... up to the largest `orders_placed` plus `beyond`;
    `estimator` is anything with the tree's `predict` on encoded features (the tree, or the
    served estimator).
    """
    orders = np.arange(0.0, data.max_orders_placed + beyond + step / 2, step, dtype=np.float64)
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
        f"monotonicity of {what} over 0..{data.max_orders_placed + beyond:g} orders in steps of {step:g}: "
        f"{report.total_decreasing_steps} decreasing step(s), largest drop {report.largest_drop_hours:.3f}h; "
        "per product "
        + listed([f"{c}: {p.decreasing_steps}" for c, p in list(per_product.items())[:MESSAGES.max_codes_named]],
                 total=len(per_product))
    )
    return report


def build_model(
    estimator: DecisionTreeRegressor,
    hyperparameters: Dict[str, Any],
    data: PreparedData,
    metrics: TaskMetrics,
    dataset: Dataset,
    *,
    calibration: Optional[Calibration] = None,
    upper_bound: Optional[UpperBound] = None,
    ranges: Optional[Dict[str, TrainedRange]] = None,
    tree_metrics: Optional[TaskMetrics] = None,
) -> Model:
    """Wrap the tuned estimator with its lineage (the commit from `GIT_COMMIT_HASH`), and check it
    as every reader will: the train stage never persists a model the serve stage would refuse.

    `metrics` are the served estimate's, `tree_metrics` the tree's own; the tree's dips are
    measured as before (whole orders, 0 to the largest `orders_placed`) and the served
    estimate's over TRAIN.dips_step_orders steps to TRAIN.dips_beyond_orders past it.

    Raises:
        InvalidModelError: the model fails `check_model_structure` (the same check, with the
            same limits, that the serve stage and batch scoring apply when they load it).
    """
    model = Model(
        estimator=estimator,
        encoding=data.encoding,
        dataset=DatasetLineage(
            dataset.bucket, dataset.key, dataset.timestamp, dataset.etag, dataset.version_id
        ),
        metrics=metrics,
        hyperparameters=dict(hyperparameters),
        monotonicity=measure_monotonicity(estimator, data),
        git_commit=environment_value(ENVIRONMENT.git_commit) or "unknown",
        calibration=calibration,
        upper_bound=upper_bound,
        trained_ranges=ranges,
        tree_metrics=tree_metrics,
    )
    model.served_monotonicity = measure_monotonicity(
        model.served_estimator, data, TRAIN.dips_step_orders, TRAIN.dips_beyond_orders, "the served estimate")
    check_model_structure(model)
    return model


def _some_products(counts: Dict[str, int]) -> str:
    """A per-product mapping as a log line shows it: all of it, or its first products and how many more."""
    if len(counts) <= MESSAGES.max_codes_named:
        return str(counts)
    first = dict(list(counts.items())[:MESSAGES.max_codes_named])
    return f"{first} and {len(counts) - MESSAGES.max_codes_named} more"


def _report(
    problems: List[str], mask: "pd.Series[bool]", what: str, values: "Optional[pd.Series[Any]]" = None
) -> None:
    mask = mask.fillna(False).astype(bool)
    count = int(mask.sum())
    if count:
        rows = ", ".join(str(i + 2) for i in np.flatnonzero(mask.to_numpy())[:5])
        first = values[mask].iloc[0] if values is not None else None
        # numpy's scalars are quoted as the numbers they are (150000, not np.int64(150000))
        example = f" (e.g. {quote(first.item() if isinstance(first, np.generic) else first)})" \
            if values is not None else ""
        more = "..." if count > 5 else ""
        problems.append(f"{count} row(s) with {what}{example} at CSV line(s) {rows}{more}")
