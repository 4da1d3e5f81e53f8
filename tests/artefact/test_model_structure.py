"""The structure check a model passes before anything predicts with it (`check_model_structure`)."""
from typing import Any, Callable, Dict

import numpy as np
import pytest

from pipeline.artefact.model import InvalidModelError, Model, check_model_structure
from tests.helpers import crafted_model


def _first_internal(state: Dict[str, Any]) -> int:
    return int(np.flatnonzero(state["nodes"]["left_child"] != -1)[0])


def _set_node(field: str, value: Any) -> Callable[[Dict[str, Any]], None]:
    def edit(state: Dict[str, Any]) -> None:
        state["nodes"][field][_first_internal(state)] = value
    return edit


def _nan_leaf_value(state: Dict[str, Any]) -> None:
    state["values"][int(np.flatnonzero(state["nodes"]["left_child"] == -1)[0]), 0, 0] = np.nan


def test_a_trained_model_passes(trained_model: Model) -> None:
    check_model_structure(trained_model)


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set_node("left_child", 10**6), r"node 0 of the tree has left child 1000000, not in 1\.\."),
        (_set_node("right_child", 10**6), r"node 0 of the tree has right child 1000000, not in 1\.\."),
        (_set_node("left_child", 0), "node 0 of the tree has left child 0"),  # a cycle
        (_set_node("right_child", -1), "node 0 of the tree has exactly one child"),
        (_set_node("feature", 7), "node 0 of the tree splits on feature 7, not in 0..1"),
        (_set_node("feature", -3), "splits on feature -3"),
        (_set_node("threshold", np.inf), "node 0 of the tree has a non-finite threshold"),
        (_nan_leaf_value, "has a non-finite value"),
    ],
    ids=["left-out-of-range", "right-out-of-range", "cycle", "one-child", "feature-out-of-range",
         "negative-feature", "infinite-threshold", "nan-value"],
)
def test_a_crafted_tree_is_refused_naming_the_problem(
    trained_model: Model, edit: Callable[[Dict[str, Any]], None], message: str
) -> None:
    with pytest.raises(InvalidModelError, match=message):
        check_model_structure(crafted_model(trained_model, edit))


def test_an_estimator_claiming_other_features_is_refused(trained_model: Model) -> None:
    trained_model.estimator.n_features_in_ = 3

    with pytest.raises(InvalidModelError, match="claims 3 feature"):
        check_model_structure(trained_model)


def test_a_tree_with_two_outputs_is_refused(trained_model: Model) -> None:
    trained_model.estimator.n_outputs_ = 2

    with pytest.raises(InvalidModelError, match="1 feature|2 output"):
        check_model_structure(trained_model)


def test_an_estimator_of_another_class_is_refused(trained_model: Model) -> None:
    trained_model.estimator = "a tree"  # type: ignore[assignment]

    with pytest.raises(InvalidModelError, match="the estimator is a str, not a DecisionTreeRegressor"):
        check_model_structure(trained_model)


def test_an_empty_product_code_encoding_is_refused(trained_model: Model) -> None:
    object.__setattr__(trained_model.encoding, "codes", ())

    with pytest.raises(InvalidModelError, match="product-code encoding"):
        check_model_structure(trained_model)


def test_an_absurd_largest_orders_placed_is_refused(trained_model: Model) -> None:
    object.__setattr__(trained_model.monotonicity, "max_orders_placed", 10**12)

    with pytest.raises(InvalidModelError, match="largest orders_placed seen in training is 1000000000000"):
        check_model_structure(trained_model)
