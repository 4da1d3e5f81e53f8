"""What the service serves over the tree: a non-decreasing estimate, an upper bound, a range.

- `Calibration`: per product, a non-decreasing step function of `orders_placed` (breakpoints
  and values), the isotonic projection of the tree's estimates on the training rows (fitted by
  `train/calibrate.py`). Evaluating it is one binary search over the product's breakpoints.
- `UpperBound`: the split-conformal margin added to every estimate, and the coverage it was
  fitted for.
- `TrainedRange`: per product, the smallest and largest `orders_placed` trained on; outside
  it a prediction is flagged `extrapolated`.
- `ServedEstimator`: the tree with its calibration, answering `predict(X)` on the encoded
  features as the tree does, so that evaluation, the logic checks and the dips measurement
  judge what is served.

All are plain values (tuples, floats), pickled with the model; `check_served_parts` checks
them as `check_model_structure` checks the tree.
"""
import math
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np


class InvalidServedPartError(ValueError):
    """A calibration, upper bound or trained range that is not one the train stage makes."""


@dataclass(frozen=True)
class ProductSteps:
    """A non-decreasing step function: `values[i]` for `thresholds[i-1] < x <= thresholds[i]`.

    Below the first threshold the first value holds, above the last the last: the estimate is
    never invented beyond the training rows.
    """

    thresholds: Tuple[float, ...]
    values: Tuple[float, ...]

    def at(self, orders_placed: float) -> float:
        """The value at one point: one binary search."""
        return self.values[bisect_left(self.thresholds, orders_placed)]

    def at_many(self, orders_placed: np.ndarray) -> np.ndarray:
        """The values at many points; the same comparisons as `at` (`searchsorted`, left side)."""
        index = np.searchsorted(np.asarray(self.thresholds, dtype=np.float64), orders_placed, side="left")
        return np.asarray(self.values, dtype=np.float64)[index]


@dataclass(frozen=True)
class Calibration:
    """Per product code, the served estimate as a step function of `orders_placed`."""

    per_product: Dict[str, ProductSteps]

    @property
    def breakpoints(self) -> int:
        return sum(len(steps.thresholds) for steps in self.per_product.values())


@dataclass(frozen=True)
class UpperBound:
    """`upper = estimate + margin_hours`, fitted on `n_residuals` held-out rows for `coverage`."""

    coverage: float
    margin_hours: float
    n_residuals: int


@dataclass(frozen=True)
class TrainedRange:
    """The smallest and largest `orders_placed` of a product's training rows."""

    lowest: float
    highest: float

    def excludes(self, orders_placed: float) -> bool:
        return orders_placed < self.lowest or orders_placed > self.highest


class ServedEstimator:
    """The tree, or its calibration when there is one, as an estimator of the encoded features.

    `predict(X)` takes what the tree takes (`orders_placed`, product index) and returns the
    served estimates: the calibration's step functions per product, or the tree's own.
    """

    def __init__(self, tree: Any, calibration: Optional[Calibration], codes: Sequence[str]) -> None:
        self.tree = tree
        self.calibration = calibration
        self.codes = tuple(codes)

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self.calibration is None:
            return np.asarray(self.tree.predict(X), dtype=np.float64)
        X = np.asarray(X, dtype=np.float64)
        estimates = np.empty(len(X), dtype=np.float64)
        products = X[:, 1].astype(np.int64)
        for index in np.unique(products).tolist():
            selected = products == index
            estimates[selected] = self.calibration.per_product[self.codes[index]].at_many(X[selected, 0])
        return estimates


def check_served_parts(codes: Sequence[str], calibration: Any, upper_bound: Any, trained_ranges: Any) -> None:
    """Refuse a calibration, bound or range that could crash or mislead a prediction.

    Each part may be None (a model made before it, or trained with calibration off). A
    calibration has a step function for exactly the model's codes, finite ascending
    thresholds and finite non-decreasing values, one more value than thresholds; a bound a
    finite margin >= 0 and a coverage in (0, 1); a range finite bounds, lowest <= highest, for
    exactly the model's codes.

    Raises:
        InvalidServedPartError: naming the first problem found.
    """
    if calibration is not None:
        per_product: Any = getattr(calibration, "per_product", None)
        _check_codes("calibration", per_product, codes)
        for code, steps in per_product.items():
            _check_steps(code, steps)
    if upper_bound is not None:
        margin: Any = getattr(upper_bound, "margin_hours", None)
        coverage: Any = getattr(upper_bound, "coverage", None)
        if not (_finite(margin) and margin >= 0 and _finite(coverage) and 0 < coverage < 1):
            raise InvalidServedPartError(f"the upper bound's margin {margin!r} or coverage {coverage!r} is not "
                                         "a finite number >= 0 and a number in (0, 1)")
    if trained_ranges is not None:
        _check_codes("trained range", trained_ranges, codes)
        for code, trained in trained_ranges.items():
            lowest: Any = getattr(trained, "lowest", None)
            highest: Any = getattr(trained, "highest", None)
            if not (_finite(lowest) and _finite(highest) and lowest <= highest):
                raise InvalidServedPartError(f"the trained range of {code} is not two finite numbers in order")


def _check_codes(what: str, mapping: Any, codes: Sequence[str]) -> None:
    if not isinstance(mapping, Mapping) or set(mapping) != set(codes):
        raise InvalidServedPartError(f"the {what} does not cover exactly the model's product codes")


def _check_steps(code: str, steps: Any) -> None:
    thresholds: Any = getattr(steps, "thresholds", None)
    values: Any = getattr(steps, "values", None)
    if not (isinstance(thresholds, tuple) and isinstance(values, tuple) and len(values) == len(thresholds) + 1):
        raise InvalidServedPartError(f"the calibration of {code} is not a tuple of thresholds and one more value")
    if not all(_finite(value) for value in thresholds + values):
        raise InvalidServedPartError(f"the calibration of {code} holds a value that is not a finite number")
    if any(b <= a for a, b in zip(thresholds, thresholds[1:])) or any(b < a for a, b in zip(values, values[1:])):
        raise InvalidServedPartError(f"the calibration of {code} is not ascending thresholds and non-decreasing "
                                     "values")


def _finite(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value)


def lineage(calibration: Optional[Calibration], upper_bound: Optional[UpperBound],
            trained_ranges: Optional[Dict[str, TrainedRange]]) -> Dict[str, Any]:
    """The served parts as JSON-ready values (None where the model has none)."""
    return {
        "calibration": None if calibration is None else {
            "breakpoints": calibration.breakpoints,
            "per_product": {code: {"thresholds": list(steps.thresholds), "values": list(steps.values)}
                            for code, steps in calibration.per_product.items()},
        },
        "upper_bound": None if upper_bound is None else {
            "coverage": upper_bound.coverage, "margin_hours": upper_bound.margin_hours,
            "n_residuals": upper_bound.n_residuals,
        },
        "trained_ranges": None if trained_ranges is None else {
            code: [trained.lowest, trained.highest] for code, trained in trained_ranges.items()
        },
    }


def as_floats(values: Iterable[Any]) -> List[float]:
    """Plain Python floats (what the artefact stores: no numpy scalars in a pickle)."""
    return [float(value) for value in values]
