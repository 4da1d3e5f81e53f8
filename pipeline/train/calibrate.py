"""Fitting what is served over the tree: the isotonic calibration, the upper bound, the ranges.

- `fit_calibration`: per product, the isotonic (non-decreasing in `orders_placed`) projection
  of the tree's estimates on that product's training rows, as a step function whose
  breakpoints are the midpoints between consecutive distinct training values of
  `orders_placed` (where the tree's own splits fall), with equal neighbours merged.
- `fit_upper_bound`: split-conformal on the held-out rows: the ceil((n + 1) * coverage)-th
  smallest residual (label minus served estimate) of the n test rows, never below 0.
- `trained_ranges`: per product, the smallest and largest `orders_placed` of its training rows.
"""
import logging
import math
from typing import Dict

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.tree import DecisionTreeRegressor

from pipeline.artefact.calibration import Calibration, ProductSteps, TrainedRange, UpperBound, as_floats
from pipeline.train.steps import PreparedData

log = logging.getLogger(__name__)


def fit_calibration(estimator: DecisionTreeRegressor, data: PreparedData) -> Calibration:
    """The isotonic projection of the tree's estimates on the training rows, per product.

    Every product has training rows (the split is stratified by product), so every code gets
    a step function.
    """
    tree_estimates = estimator.predict(data.X_train)
    per_product: Dict[str, ProductSteps] = {}
    for index, code in enumerate(data.encoding.codes):
        selected = data.X_train[:, 1] == index
        orders = data.X_train[selected, 0]
        fitted = IsotonicRegression(increasing=True).fit(orders, tree_estimates[selected])
        distinct = np.unique(orders)
        values = np.maximum.accumulate(fitted.predict(distinct))
        thresholds = (distinct[:-1] + distinct[1:]) / 2.0
        # A threshold between two equal values changes nothing: keep only where the value rises.
        rises = values[1:] > values[:-1]
        per_product[code] = ProductSteps(
            thresholds=tuple(as_floats(thresholds[rises])),
            values=tuple(as_floats(np.concatenate([values[:1], values[1:][rises]]))),
        )
    calibration = Calibration(per_product)
    log.info(f"calibration: non-decreasing step functions over {len(per_product)} product(s), "
             f"{calibration.breakpoints} breakpoint(s) in all")
    return calibration


def fit_upper_bound(residuals: np.ndarray, coverage: float) -> UpperBound:
    """The one-sided split-conformal margin for `coverage` from held-out residuals (label minus
    estimate): the k-th smallest, k = ceil((n + 1) * coverage). With too few rows for that
    (k > n) the largest residual is taken and a WARNING says the coverage is not guaranteed.

    Raises:
        ValueError: if there are no residuals or coverage is not in (0, 1).
    """
    if not 0 < coverage < 1:
        raise ValueError(f"the upper bound's coverage must be in (0, 1), got {coverage!r}")
    n = len(residuals)
    if n == 0:
        raise ValueError("an upper bound needs at least one held-out row")
    rank = math.ceil((n + 1) * coverage)
    if rank > n:
        log.warning(f"{n} held-out rows are too few for an upper bound at coverage {coverage}: the largest "
                    "residual is used and the coverage is not guaranteed")
        rank = n
    margin = max(float(np.sort(residuals)[rank - 1]), 0.0)
    log.info(f"upper bound: estimate + {margin:.3f}h for coverage {coverage} ({n} held-out rows)")
    return UpperBound(coverage=float(coverage), margin_hours=margin, n_residuals=n)


def trained_ranges(data: PreparedData) -> Dict[str, TrainedRange]:
    """Per product, the smallest and largest `orders_placed` among its training rows."""
    ranges: Dict[str, TrainedRange] = {}
    for index, code in enumerate(data.encoding.codes):
        orders = data.X_train[data.X_train[:, 1] == index, 0]
        ranges[code] = TrainedRange(float(orders.min()), float(orders.max()))
    return ranges
