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
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from sklearn.tree import DecisionTreeRegressor

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
    def product_codes(self) -> Tuple[str, ...]:
        return self.encoding.codes

    def predict(self, product_codes: Sequence[str], orders_placed: Numbers) -> np.ndarray:
        """Estimated hours to dispatch for each (product code, orders placed) pair.

        Raises:
            UnknownProductCodeError: if a product code is not one the model was trained on.
        """
        return np.asarray(
            self.estimator.predict(encode_features(orders_placed, product_codes, self.encoding)),
            dtype=np.float64,
        )

    def predict_one(self, product_code: str, orders_placed: float) -> float:
        """The same estimate as `predict` for a single request, without numpy's overhead.

        Raises:
            UnknownProductCodeError: if the product code is not one the model was trained on.
        """
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
        }
