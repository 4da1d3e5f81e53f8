"""Fitting what is served over the tree: the isotonic calibration, the upper bound, the ranges.

- `fit_calibration`: per product, the isotonic (non-decreasing in `orders_placed`) projection
  of the tree's estimates on that product's training rows (scikit-learn's `IsotonicRegression`),
  as a step function: its own prediction (the projection at each training value, linear in
  between) taken at each training value and at every TRAIN.calibration_step_orders from the
  smallest to the largest (wider where a product's range holds more than
  TRAIN.calibration_max_steps of them), with the breakpoints at the midpoints between those points and equal
  neighbours merged.
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
from pipeline.settings import TRAIN
from pipeline.train.steps import PreparedData

log = logging.getLogger(__name__)


def fit_calibration(estimator: DecisionTreeRegressor, data: PreparedData,
                    step_orders: float = TRAIN.calibration_step_orders,
                    max_steps: int = TRAIN.calibration_max_steps) -> Calibration:
    """The isotonic projection of the tree's estimates on the training rows, per product.

    At a training value the step function is the projection's value there. Between two
    training values `IsotonicRegression.predict` interpolates linearly, and the step function
    follows it at every `step_orders`: where a busy day's training rows are sparse (the tail of
    `orders_placed`), a request between two of them gets the value in between rather than the
    nearer one's (docs/data-and-model.md, "The served estimate"); a product whose range holds more
    than `max_steps` of `step_orders` is stepped `max_steps` times evenly, so that its breakpoints
    stay at most `max_steps` plus its distinct training values. Every product has training rows
    (the split is stratified by product), so every code gets a step function.
    """
    tree_estimates = estimator.predict(data.X_train)
    per_product: Dict[str, ProductSteps] = {}
    for index, code in enumerate(data.encoding.codes):
        selected = data.X_train[:, 1] == index
        orders = data.X_train[selected, 0]
        fitted = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(orders, tree_estimates[selected])
        lowest, highest = float(orders.min()), float(orders.max())
        step = max(step_orders, (highest - lowest) / max_steps)
        points = np.union1d(np.arange(lowest, highest + step / 2, step), orders)
        points = points[points <= highest]
        # The running maximum only guards the interpolation's rounding: the prediction never falls.
        values = np.maximum.accumulate(fitted.predict(points))
        thresholds = (points[:-1] + points[1:]) / 2.0
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
