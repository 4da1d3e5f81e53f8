"""Champion/challenger and the gates a new model must pass before it goes live.

The champion is the live model (the newest one not rejected); the challenger is the model
just trained. Both are scored on the same held-out rows of the new week; rows of products
the champion does not know are left out, and said so. The gates (logic checks, the r² error
threshold, the champion comparison) are applied together, after the report is written, so
that one ERROR line explains a refused run completely.
"""
import logging
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from pipeline.artefact.model import Model
from pipeline.model_registry.live_model import get_live_model
from pipeline.settings import MESSAGES
from pipeline.storage.client import S3DeadlineError, StorageError
from pipeline.storage.datasets import Dataset, get_dataset_version
from pipeline.storage.layout import NoObjectsError
from pipeline.storage.signed_artefacts import ArtefactError
from pipeline.train.steps import ModelValidationError
from pipeline.utils import listed, quote


log = logging.getLogger(__name__)


class ModelRefusedError(ModelValidationError):
    """The new model failed one or more gates; nothing was persisted."""


@dataclass(frozen=True)
class ChampionComparison:
    """The live model and the new one, scored on the same held-out rows of the new week."""

    champion_id: str
    champion_key: Optional[str]
    champion_mae: float
    challenger_mae: float
    rows_compared: int
    rows_left_out: int
    codes_left_out: Tuple[str, ...]
    tolerance: float

    @property
    def relative_difference(self) -> float:
        """How much worse (positive) or better (negative) the challenger is, relatively."""
        return self.challenger_mae / self.champion_mae - 1.0 if self.champion_mae > 0 else 0.0

    @property
    def refused(self) -> bool:
        return self.challenger_mae > self.champion_mae * (1.0 + self.tolerance)

    def describe(self) -> str:
        return (
            f"new model's MAE {self.challenger_mae:.4f} hours against live model {self.champion_id}'s "
            f"MAE {self.champion_mae:.4f} hours on the same {self.rows_compared} held-out rows "
            f"({self.relative_difference:+.1%}; tolerance +{self.tolerance:.0%})"
        )

    def to_json(self) -> Dict[str, Any]:
        return {**asdict(self), "codes_left_out": list(self.codes_left_out),
                "relative_difference": self.relative_difference, "refused": self.refused}


@dataclass(frozen=True)
class Decision:
    """Whether the new model goes live, and every gate that failed."""

    accepted: bool
    failures: Tuple[str, ...]

    def to_json(self) -> Dict[str, Any]:
        return {"accepted": self.accepted, "failures": list(self.failures)}


def check_tolerance_valid(tolerance: float) -> None:
    """Raises: ValueError if the tolerance is not a finite number from 0 upwards."""
    if not (isinstance(tolerance, (int, float)) and np.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"--champion-tolerance must be a finite number >= 0, got {tolerance!r}")


def load_champion(bucket: str) -> Tuple[Optional[Model], Optional[Dataset]]:
    """The live model, if any, and the week it was trained on, if it can still be read.

    No model yet: (None, None), and the first model goes live on the other gates alone. A live
    model that cannot be loaded (altered, corrupt, unpicklable) could not be served either, so
    it is no champion: a WARNING says so and the run goes on without a comparison.

    Raises:
        NoSuchBucketError, AccessDeniedError, StorageError: listing the models failed.
    """
    try:
        champion = get_live_model(bucket)
    except NoObjectsError as error:
        log.info(f"no live model to compare with ({error}): the new model is judged on the other gates alone")
        return None, None
    except ArtefactError as error:
        log.warning(f"the live model cannot be loaded, so there is no champion to compare with: {error}")
        return None, None
    log.info(f"champion: live model {champion.artefact_id} (s3://{bucket}/{champion.artefact_key})")
    lineage = champion.dataset
    try:
        reference = get_dataset_version(lineage.bucket, lineage.key, lineage.version_id)
    except S3DeadlineError:
        raise  # S3 is too slow for the stage to end in time: no reason to go on without a reference
    except StorageError as error:
        log.warning(f"cannot read the live model's training week, so there is no reference week: {error}")
        return champion, None
    return champion, reference


def compare_with_champion(
    challenger: Model, champion: Model, orders: np.ndarray, codes: List[str], labels: np.ndarray,
    tolerance: float,
) -> Optional[ChampionComparison]:
    """Score both models on the held-out rows (`orders`, `codes`, `labels`) the champion can score.

    Returns:
        The comparison, or None when the champion knows none of the rows' products.
    """
    known = np.array([code in champion.product_codes for code in codes], dtype=bool)
    left_out = tuple(sorted({code for code, ok in zip(codes, known) if not ok}))
    if left_out:
        log.info(
            f"champion comparison leaves out {int((~known).sum())} held-out row(s) of product(s) "
            f"{listed([quote(code) if len(code) > MESSAGES.quote_prefix_chars else code for code in left_out])}, "
            f"unknown to live model {champion.artefact_id}"
        )
    if not known.any():
        log.info(f"no champion comparison: live model {champion.artefact_id} knows none of the products")
        return None
    kept_codes = [code for code, ok in zip(codes, known) if ok]
    champion_errors = np.abs(champion.predict(kept_codes, orders[known]) - labels[known])
    challenger_errors = np.abs(challenger.predict(kept_codes, orders[known]) - labels[known])
    comparison = ChampionComparison(
        champion.artefact_id, champion.artefact_key, float(champion_errors.mean()),
        float(challenger_errors.mean()), int(known.sum()), int((~known).sum()), left_out, tolerance,
    )
    log.info(f"champion/challenger: {comparison.describe()}")
    return comparison


def decide(
    logic_failures: List[str], r_squared_failure: Optional[str], comparison: Optional[ChampionComparison]
) -> Decision:
    """Every gate at once: the logic checks, the r² error threshold and the champion."""
    failures: List[str] = []
    if logic_failures:
        failures.append("logic checks: " + "; ".join(logic_failures))
    if r_squared_failure:
        failures.append(f"r² error threshold: {r_squared_failure}")
    if comparison is not None and comparison.refused:
        failures.append(f"champion: {comparison.describe()}")
    return Decision(not failures, tuple(failures))


def apply_decision(decision: Decision, report_uri: str) -> None:
    """Raise the one error that lists every failed gate; nothing to do for an accepted model.

    Raises:
        ModelRefusedError: when any gate failed.
    """
    if not decision.accepted:
        raise ModelRefusedError(
            f"model refused by {len(decision.failures)} gate(s): " + " | ".join(decision.failures)
            + f"; no model persisted; report at {report_uri}"
        )
