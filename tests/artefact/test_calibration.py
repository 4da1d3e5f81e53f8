"""The served estimate's parts: step functions, the served estimator, and their structure check."""
from typing import Any, Dict

import numpy as np
import pytest

from pipeline.artefact.calibration import (
    Calibration,
    InvalidServedPartError,
    ProductSteps,
    ServedEstimator,
    TrainedRange,
    UpperBound,
    check_served_parts,
)
from pipeline.artefact.model import InvalidModelError, Model, check_model_structure

CODES = ("SKU001", "SKU002")
GOOD = Calibration({"SKU001": ProductSteps((1.5, 4.0), (0.5, 1.0, 2.0)), "SKU002": ProductSteps((), (3.0,))})


def test_a_step_function_is_one_binary_search_and_agrees_with_the_vectorised_one() -> None:
    steps = GOOD.per_product["SKU001"]
    points = [0.0, 1.5, np.nextafter(1.5, 2.0), 3.0, 4.0, 4.5, 1e9]

    assert [steps.at(float(x)) for x in points] == [0.5, 0.5, 1.0, 1.0, 1.0, 2.0, 2.0]
    assert steps.at_many(np.array(points)).tolist() == [steps.at(float(x)) for x in points]


def test_the_served_estimator_answers_each_product_with_its_own_steps() -> None:
    served = ServedEstimator(None, GOOD, CODES)

    X = np.array([[0.0, 0.0], [5.0, 0.0], [5.0, 1.0], [0.0, 1.0]])

    assert served.predict(X).tolist() == [0.5, 2.0, 3.0, 3.0]


def test_the_trained_range_excludes_only_what_is_outside_it() -> None:
    trained = TrainedRange(2.0, 300.0)
    assert [trained.excludes(x) for x in (1.99, 2.0, 300.0, 300.5)] == [True, False, False, True]


def test_sound_parts_and_missing_parts_pass() -> None:
    check_served_parts(CODES, GOOD, UpperBound(0.9, 1.3, 200), {c: TrainedRange(0.0, 10.0) for c in CODES})
    check_served_parts(CODES, None, None, None)


BAD: Dict[str, Dict[str, Any]] = {
    "a code missing": {"calibration": Calibration({"SKU001": GOOD.per_product["SKU001"]})},
    "falling values": {"calibration": Calibration({**GOOD.per_product, "SKU002": ProductSteps((1.0,), (3.0, 2.0))})},
    "unsorted thresholds": {"calibration": Calibration({**GOOD.per_product,
                                                        "SKU002": ProductSteps((2.0, 1.0), (1.0, 2.0, 3.0))})},
    "a value too few": {"calibration": Calibration({**GOOD.per_product, "SKU002": ProductSteps((1.0,), (3.0,))})},
    "a NaN": {"calibration": Calibration({**GOOD.per_product, "SKU002": ProductSteps((float("nan"),), (1.0, 2.0))})},
    "lists, not tuples": {"calibration": Calibration({**GOOD.per_product,
                                                      "SKU002": ProductSteps([], [3.0])})},  # type: ignore[arg-type]
    "a negative margin": {"upper_bound": UpperBound(0.9, -1.0, 10)},
    "a coverage of 1": {"upper_bound": UpperBound(1.0, 1.0, 10)},
    "an infinite margin": {"upper_bound": UpperBound(0.9, float("inf"), 10)},
    "a range upside down": {"trained_ranges": {"SKU001": TrainedRange(5.0, 1.0), "SKU002": TrainedRange(0.0, 1.0)}},
    "a range for another code": {"trained_ranges": {"SKU001": TrainedRange(0.0, 1.0), "SKU009": TrainedRange(0, 1)}},
}


@pytest.mark.parametrize("problem", sorted(BAD))
def test_a_crafted_part_is_refused(problem: str) -> None:
    parts: Dict[str, Any] = {"calibration": None, "upper_bound": None, "trained_ranges": None, **BAD[problem]}

    with pytest.raises(InvalidServedPartError):
        check_served_parts(CODES, parts["calibration"], parts["upper_bound"], parts["trained_ranges"])


def test_the_model_structure_check_refuses_a_crafted_calibration(trained_model: Model) -> None:
    trained_model.calibration = Calibration({"SKU001": ProductSteps((1.0,), (2.0, 1.0))})

    with pytest.raises(InvalidModelError, match="calibration does not cover exactly the model's product codes"):
        check_model_structure(trained_model)
