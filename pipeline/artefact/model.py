"""The model artefact: a fitted estimator wrapped with everything needed to trust it.

A `Model` carries its lineage (what data, what code, what settings, how good) and the
product-code encoding it was trained with, so that the service needs nothing else to answer
requests and to say exactly which model answered them.
"""
import hashlib
import pickle
import platform
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from sklearn.tree import DecisionTreeRegressor

from pipeline.artefact.calibration import (
    Calibration,
    InvalidServedPartError,
    ServedEstimator,
    TrainedRange,
    UpperBound,
    check_served_parts,
)
from pipeline.artefact.calibration import lineage as served_parts_lineage
from pipeline.artefact.features import Numbers, ProductCodeEncoding, encode_features
from pipeline.settings import ARTEFACT
from pipeline.utils import quote

MODEL_NAME = "time-to-dispatch"
N_FEATURES = 2
# scikit-learn's marker for "no child": the node is a leaf.
_LEAF = -1


class InvalidModelError(ValueError):
    """A model artefact whose structure is not that of a model the train stage makes."""


@dataclass(frozen=True)
class TaskMetrics:
    """How well the model did on the held-out test split."""

    r_squared: float
    mean_absolute_error: float
    n_train: int
    n_test: int


@dataclass(frozen=True)
class DatasetLineage:
    """Which exact S3 object the model was trained on."""

    bucket: str
    key: str
    timestamp: datetime
    etag: str
    version_id: Optional[str]


@dataclass(frozen=True)
class ProductMonotonicity:
    """Where a product's estimate falls as `orders_placed` grows by one whole order."""

    decreasing_steps: int
    largest_drop_hours: float


@dataclass(frozen=True)
class MonotonicityReport:
    """Measured, not gated: a piecewise-constant tree can dip as orders grow."""

    max_orders_placed: int
    per_product: Dict[str, ProductMonotonicity]

    @property
    def total_decreasing_steps(self) -> int:
        return sum(p.decreasing_steps for p in self.per_product.values())

    @property
    def largest_drop_hours(self) -> float:
        return max((p.largest_drop_hours for p in self.per_product.values()), default=0.0)


class Estimate(NamedTuple):
    """One prediction's fields besides `model_version`, as the API and batch scoring give them."""

    est_hours_to_dispatch: float
    upper_hours_to_dispatch: Optional[float]
    extrapolated: bool


class Estimates(NamedTuple):
    """Many predictions' fields: arrays, `upper` None for a model without an upper bound."""

    est_hours_to_dispatch: np.ndarray
    upper_hours_to_dispatch: Optional[np.ndarray]
    extrapolated: np.ndarray


def library_versions() -> Dict[str, str]:
    """Versions of Python and of the libraries the artefact's pickle depends on."""
    import pandas
    import sklearn

    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "pandas": pandas.__version__,
    }


def estimator_hash(estimator: DecisionTreeRegressor) -> str:
    """SHA-256 of the pickled estimator: the same fitted tree gives the same hash."""
    return hashlib.sha256(pickle.dumps(estimator, protocol=4)).hexdigest()


def check_model_structure(model: "Model") -> None:
    """Refuse a model whose estimator could crash or mislead prediction, before any prediction.

    scikit-learn's compiled tree code trusts its arrays: a child or feature index out of range
    reads arbitrary memory (a segmentation fault, not an exception). So every index, shape and
    value is checked here, in Python, first: a fitted `DecisionTreeRegressor` on
    N_FEATURES features with one output; node arrays of `node_count` entries; every internal
    node's children in range and after it (sklearn numbers children after their parent, which
    also rules out cycles), its feature in range and its threshold finite; leaves without
    children; values finite, of shape (node_count, 1, 1); and the encoding and lineage the
    service reads sane.

    Raises:
        InvalidModelError: naming the first problem found.
    """
    estimator = model.estimator
    if not isinstance(estimator, DecisionTreeRegressor):
        raise InvalidModelError(f"the estimator is a {type(estimator).__name__}, not a DecisionTreeRegressor")
    if getattr(estimator, "n_features_in_", None) != N_FEATURES or getattr(estimator, "n_outputs_", None) != 1:
        raise InvalidModelError(
            f"the estimator claims {getattr(estimator, 'n_features_in_', None)} feature(s) and "
            f"{getattr(estimator, 'n_outputs_', None)} output(s); a model has {N_FEATURES} and 1"
        )
    tree = getattr(estimator, "tree_", None)
    if tree is None or type(tree).__name__ != "Tree":
        raise InvalidModelError("the estimator has no fitted tree")
    _check_tree(tree)
    codes = getattr(model.encoding, "codes", None)
    if not isinstance(codes, tuple) or not codes or not all(isinstance(c, str) and c for c in codes):
        raise InvalidModelError("the product-code encoding is not a non-empty tuple of non-empty strings")
    max_orders = getattr(model.monotonicity, "max_orders_placed", None)
    if not isinstance(max_orders, int) or not 0 <= max_orders <= ARTEFACT.max_trained_orders_placed:
        raise InvalidModelError(
            f"the largest orders_placed seen in training is {quote(max_orders)}, not an integer in "
            f"0..{ARTEFACT.max_trained_orders_placed}"
        )
    try:
        check_served_parts(codes, model.calibration, model.upper_bound, model.trained_ranges)
    except InvalidServedPartError as error:
        raise InvalidModelError(str(error)) from None


def _check_tree(tree: Any) -> None:
    count = tree.node_count
    # Checked before any array is read: the arrays are views of node_count entries of a
    # buffer of `capacity`, so a larger count would read past its end. (scikit-learn 1.6's
    # unpickling sets the count from the arrays; this keeps the walk safe if that changes.)
    if not isinstance(count, int) or not 1 <= count <= tree.capacity:
        raise InvalidModelError(f"the tree's node count {count!r} is not in 1..{tree.capacity} (its capacity)")
    if (tree.n_features, tree.n_outputs) != (N_FEATURES, 1):
        raise InvalidModelError(
            f"the tree has {tree.n_features} feature(s) and {tree.n_outputs} output(s); a model has {N_FEATURES} and 1"
        )
    left, right = np.asarray(tree.children_left), np.asarray(tree.children_right)
    feature, threshold, value = np.asarray(tree.feature), np.asarray(tree.threshold), np.asarray(tree.value)
    for name, array in (("children_left", left), ("children_right", right), ("feature", feature),
                        ("threshold", threshold)):
        if array.shape != (count,):
            raise InvalidModelError(f"the tree's {name} has shape {array.shape}, not ({count},)")
    if value.shape != (count, 1, 1):
        raise InvalidModelError(f"the tree's values have shape {value.shape}, not ({count}, 1, 1)")
    nodes = np.arange(count)
    leaf = left == _LEAF
    if np.any(leaf != (right == _LEAF)):
        raise InvalidModelError(f"node {_first(leaf != (right == _LEAF))} of the tree has exactly one child")
    internal = ~leaf
    for name, children in (("left", left), ("right", right)):
        bad = internal & ((children <= nodes) | (children >= count))
        if bad.any():
            node = _first(bad)
            raise InvalidModelError(
                f"node {node} of the tree has {name} child {children[node]}, not in {node + 1}..{count - 1}"
            )
    bad = internal & ((feature < 0) | (feature >= N_FEATURES))
    if bad.any():
        node = _first(bad)
        raise InvalidModelError(
            f"node {node} of the tree splits on feature {feature[node]}, not in 0..{N_FEATURES - 1}"
        )
    bad = internal & ~np.isfinite(threshold)
    if bad.any():
        raise InvalidModelError(f"node {_first(bad)} of the tree has a non-finite threshold")
    if not np.all(np.isfinite(value)):
        raise InvalidModelError(f"node {_first(~np.isfinite(value[:, 0, 0]))} of the tree has a non-finite value")


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


class _TreeWalker:
    """Evaluates a fitted tree for one row in pure Python, exactly as scikit-learn does.

    scikit-learn casts features to float32 and sends a row left when
    `x[feature] <= threshold`; this does the same on plain lists, which for a single row is
    tens of times faster than `predict` with its input validation.
    """

    def __init__(self, estimator: DecisionTreeRegressor) -> None:
        tree = estimator.tree_
        self.left: List[int] = tree.children_left.tolist()
        self.right: List[int] = tree.children_right.tolist()
        self.feature: List[int] = tree.feature.tolist()
        self.threshold: List[float] = tree.threshold.tolist()
        self.value: List[float] = tree.value[:, 0, 0].tolist()

    def predict(self, orders_placed: float, product_index: float) -> float:
        row = (float(np.float32(orders_placed)), float(np.float32(product_index)))
        node = 0
        left, right, feature, threshold = self.left, self.right, self.feature, self.threshold
        while left[node] != -1:
            node = left[node] if row[feature[node]] <= threshold[node] else right[node]
        return self.value[node]


@dataclass
class Model:
    """A fitted estimator and its lineage; `str(model)` is the API's `model_version`."""

    estimator: DecisionTreeRegressor
    encoding: ProductCodeEncoding
    dataset: DatasetLineage
    metrics: TaskMetrics
    hyperparameters: Dict[str, Any]
    monotonicity: MonotonicityReport
    git_commit: str
    name: str = MODEL_NAME
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    artefact_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    library_versions: Dict[str, str] = field(default_factory=library_versions)
    model_hash: str = ""
    artefact_key: Optional[str] = None
    # Where the run's report.html is (under reports/); None for models made before reports.
    # Artefacts pickled before the field existed read it from the class default.
    report_key: Optional[str] = None
    # The SHA-256 of that report.html, signed with the artefact: the service serves the report
    # only if the object at report_key still has it. None for models made before it was recorded.
    report_sha256: Optional[str] = None
    # The served estimate's parts (docs/data-and-model.md, "The served estimate"). Artefacts
    # pickled before them read None from the class defaults and are served as before: the
    # tree's estimate, no upper bound, and the whole week's largest orders_placed as the range.
    # `metrics` are the served estimate's; `tree_metrics` the tree's own (None: they are equal).
    calibration: Optional[Calibration] = None
    upper_bound: Optional[UpperBound] = None
    trained_ranges: Optional[Dict[str, TrainedRange]] = None
    tree_metrics: Optional[TaskMetrics] = None
    served_monotonicity: Optional[MonotonicityReport] = None
    _walker: Optional[_TreeWalker] = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.created_at.tzinfo is None:
            raise ValueError("created_at must be timezone-aware (UTC)")
        if not self.model_hash:
            self.model_hash = estimator_hash(self.estimator)

    def __str__(self) -> str:
        return (
            f"{self.name}:{self.created_at.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%S.%fZ}"
            f":{self.artefact_id}:sha256={self.model_hash[:12]}"
            f":data={self.dataset.key}@{self.dataset.etag}:git={self.git_commit[:12]}"
        )

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_walker"] = None
        return state

    @property
    def served_estimator(self) -> ServedEstimator:
        """The served estimate as an estimator of the encoded features (calibrated if calibrated)."""
        return ServedEstimator(self.estimator, self.calibration, self.encoding.codes)

    def trained_range(self, product_code: str) -> TrainedRange:
        """The range of `orders_placed` a product was trained on; for a model made before ranges
        were recorded, 0 to the largest `orders_placed` of its whole week."""
        if self.trained_ranges is None:
            return TrainedRange(0.0, float(self.monotonicity.max_orders_placed))
        return self.trained_ranges[product_code]

    @property
    def product_codes(self) -> Tuple[str, ...]:
        return self.encoding.codes

    def predict(self, product_codes: Sequence[str], orders_placed: Numbers) -> np.ndarray:
        """Estimated hours to dispatch for each (product code, orders placed) pair.

        Raises:
            UnknownProductCodeError: if a product code is not one the model was trained on.
        """
        return self.served_estimator.predict(encode_features(orders_placed, product_codes, self.encoding))

    def predict_tree(self, product_codes: Sequence[str], orders_placed: Numbers) -> np.ndarray:
        """The tree's own estimates (what is served when the model has no calibration).

        Raises:
            UnknownProductCodeError: if a product code is not one the model was trained on.
        """
        return np.asarray(self.estimator.predict(encode_features(orders_placed, product_codes, self.encoding)),
                          dtype=np.float64)

    def estimate(self, product_codes: Sequence[str], orders_placed: Numbers) -> Estimates:
        """Every prediction field for many requests: the batch endpoint's and batch scoring's.

        Raises:
            UnknownProductCodeError: if a product code is not one the model was trained on.
        """
        orders = np.asarray(orders_placed, dtype=np.float64)
        if orders.size == 0 and len(product_codes) == 0:  # the estimator refuses zero rows
            nothing = np.empty(0, dtype=np.float64)
            return Estimates(nothing, None if self.upper_bound is None else nothing, np.empty(0, dtype=bool))
        estimates = self.predict(product_codes, orders)
        upper = None if self.upper_bound is None else estimates + self.upper_bound.margin_hours
        lowest, highest = self._range_arrays(product_codes)
        return Estimates(estimates, upper, (orders < lowest) | (orders > highest))

    def estimate_one(self, product_code: str, orders_placed: float) -> Estimate:
        """`estimate` for a single request, without numpy: the single endpoint's.

        Raises:
            UnknownProductCodeError: if the product code is not one the model was trained on.
        """
        estimate = self.predict_one(product_code, orders_placed)
        upper = None if self.upper_bound is None else estimate + self.upper_bound.margin_hours
        return Estimate(estimate, upper, self.trained_range(product_code).excludes(orders_placed))

    def _range_arrays(self, product_codes: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        ranges = [self.trained_range(code) for code in self.encoding.codes]
        index = self.encoding.encode(product_codes).astype(np.int64)
        return (np.array([r.lowest for r in ranges], dtype=np.float64)[index],
                np.array([r.highest for r in ranges], dtype=np.float64)[index])

    def predict_one(self, product_code: str, orders_placed: float) -> float:
        """The same estimate as `predict` for a single request, without numpy's overhead: one
        binary search over the product's breakpoints, or the tree walk for a model without a
        calibration.

        Raises:
            UnknownProductCodeError: if the product code is not one the model was trained on.
        """
        if self.calibration is not None:
            steps = self.calibration.per_product.get(product_code)
            if steps is not None:
                return steps.at(orders_placed)
            # an unknown code: the tree walk's encoding raises, naming it
        walker = self._walker
        if walker is None:
            walker = self._walker = _TreeWalker(self.estimator)
        return walker.predict(orders_placed, self.encoding.index(product_code))

    def lineage(self) -> Dict[str, Any]:
        """Everything about the model except the estimator, as JSON-ready values."""
        return {
            "model_version": str(self),
            "name": self.name,
            "artefact_key": self.artefact_key,
            "artefact_id": self.artefact_id,
            "report_key": self.report_key,
            "created_at": self.created_at.isoformat(),
            "model_hash": self.model_hash,
            "git_commit": self.git_commit,
            "dataset": {**asdict(self.dataset), "timestamp": self.dataset.timestamp.isoformat()},
            "metrics": asdict(self.metrics),
            "hyperparameters": dict(self.hyperparameters),
            "product_codes": list(self.encoding.codes),
            "monotonicity": {
                "max_orders_placed": self.monotonicity.max_orders_placed,
                "total_decreasing_steps": self.monotonicity.total_decreasing_steps,
                "largest_drop_hours": self.monotonicity.largest_drop_hours,
                "per_product": {k: asdict(v) for k, v in self.monotonicity.per_product.items()},
            },
            "library_versions": dict(self.library_versions),
            "tree_metrics": None if self.tree_metrics is None else asdict(self.tree_metrics),
            "served_monotonicity": None if self.served_monotonicity is None else {
                "max_orders_placed": self.served_monotonicity.max_orders_placed,
                "total_decreasing_steps": self.served_monotonicity.total_decreasing_steps,
                "largest_drop_hours": self.served_monotonicity.largest_drop_hours,
            },
            **served_parts_lineage(self.calibration, self.upper_bound, self.trained_ranges),
        }
