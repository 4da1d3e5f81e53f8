"""Drift: how the new week differs from the week the live model was trained on.

Pure statistics, each with its threshold (docs/governance.md explains them and where each
threshold comes from; benchmarks/governance.py measures how often each fires on healthy weeks):

- `orders_placed`, overall and per product: the population stability index (PSI) over ten
  bins cut at the reference week's deciles, and the two-sample Kolmogorov-Smirnov test
  (`scipy.stats.ks_2samp`);
- the product mix: the PSI of the product codes' shares, and any code that is new or vanished;
- performance: the live model's mean absolute error on the new week's rows, overall and per
  product, against the test MAE recorded in its lineage.

Drift warns and never blocks: `log_findings` logs one WARNING line per statistic over its
threshold, naming what drifted.
"""
import logging
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from pipeline.artefact.features import LABEL_COLUMN, ORDERS_COLUMN, PRODUCT_COLUMN
from pipeline.artefact.model import Model
from pipeline.settings import DRIFT, MESSAGES
from pipeline.utils import listed, quote


ORDERS_PLACED, PRODUCT_MIX, PERFORMANCE = "orders_placed", "product mix", "performance"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftStatistic:
    """One drift statistic of the new week against the reference, with its threshold.

    `kind` is what is compared (orders_placed, product mix, performance), `product` the
    product code when the statistic is about one product's rows; `drifted` says whether the
    value is beyond the threshold (above it, or below it for a p-value).
    """

    kind: str
    product: Optional[str]
    statistic: str
    value: float
    threshold: float
    drifted: bool
    detail: str

    @property
    def subject(self) -> str:
        return self.kind if self.product is None else f"{self.kind} of {self.product}"

    def warning(self) -> str:
        """The WARNING line of a finding: the word drift and the name of what drifted."""
        where = f" for {self.product}" if self.product else ""
        return f"{self.kind} drift{where}: {self.detail}"


@dataclass(frozen=True)
class DriftReport:
    """Every drift statistic of a run, against the live model's training week."""

    reference: Optional[str]
    statistics: Tuple[DriftStatistic, ...]
    notes: Tuple[str, ...] = ()

    @property
    def findings(self) -> List[DriftStatistic]:
        return [s for s in self.statistics if s.drifted]

    def to_json(self) -> Dict[str, Any]:
        return {
            "reference_dataset": self.reference,
            "statistics": [{**asdict(s), "subject": s.subject} for s in self.statistics],
            "findings": [s.warning() for s in self.findings],
            "notes": list(self.notes),
        }


def population_stability_index(reference: np.ndarray, current: np.ndarray, bins: int = DRIFT.psi_bins) -> float:
    """PSI of a numeric sample against a reference, over bins cut at the reference's quantiles.

    sum over bins of (current share - reference share) * ln(current share / reference share);
    0 for identical distributions, about 0.1 for a small shift, 0.25 and more for a large one.

    Raises:
        ValueError: if either sample is empty.
    """
    if len(reference) == 0 or len(current) == 0:
        raise ValueError("PSI needs two non-empty samples")
    edges = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    return _psi(_shares(np.searchsorted(edges, reference, side="right"), len(edges) + 1),
                _shares(np.searchsorted(edges, current, side="right"), len(edges) + 1))


def categorical_psi(reference: Sequence[str], current: Sequence[str]) -> float:
    """PSI of the categories' shares (codes missing from one sample count as DRIFT.psi_floor).

    Raises:
        ValueError: if either sample is empty.
    """
    if len(reference) == 0 or len(current) == 0:
        raise ValueError("PSI needs two non-empty samples")
    categories = sorted(set(reference) | set(current))
    ref = pd.Series(list(reference)).value_counts(normalize=True).reindex(categories, fill_value=0.0)
    cur = pd.Series(list(current)).value_counts(normalize=True).reindex(categories, fill_value=0.0)
    return _psi(ref.to_numpy(dtype=np.float64), cur.to_numpy(dtype=np.float64))


def orders_drift(reference: pd.DataFrame, current: pd.DataFrame) -> List[DriftStatistic]:
    """PSI and KS of `orders_placed`, over the whole week and for each product in both weeks."""
    ref_orders, ref_codes = _orders_and_codes(reference)
    cur_orders, cur_codes = _orders_and_codes(current)
    statistics = _distribution_statistics(None, ref_orders, cur_orders, DRIFT.orders_psi_threshold)
    for code in sorted(set(ref_codes) & set(cur_codes)):
        ref_rows, cur_rows = ref_orders[ref_codes == code], cur_orders[cur_codes == code]
        if min(len(ref_rows), len(cur_rows)) >= DRIFT.min_product_rows:
            statistics += _distribution_statistics(code, ref_rows, cur_rows, DRIFT.product_orders_psi_threshold)
    return statistics


def product_mix_drift(reference: pd.DataFrame, current: pd.DataFrame) -> List[DriftStatistic]:
    """PSI of the product codes' shares, and the codes that are new or vanished."""
    _, ref_codes = _orders_and_codes(reference)
    _, cur_codes = _orders_and_codes(current)
    psi = categorical_psi(list(ref_codes), list(cur_codes))
    new = sorted(set(cur_codes) - set(ref_codes))
    vanished = sorted(set(ref_codes) - set(cur_codes))
    shares = current[PRODUCT_COLUMN].astype(str).str.strip().value_counts(normalize=True)
    return [
        DriftStatistic(
            PRODUCT_MIX, None, "PSI", psi, DRIFT.product_mix_psi_threshold, psi > DRIFT.product_mix_psi_threshold,
            f"PSI of the product codes' shares {psi:.3f} (threshold {DRIFT.product_mix_psi_threshold}); "
            "this week: " + listed([f"{_code(str(code))} {share:.0%}" for code, share in sorted(shares.items())]),
        ),
        DriftStatistic(
            PRODUCT_MIX, None, "new codes", float(len(new)), 0.0, bool(new),
            f"{len(new)} product code(s) the reference week did not have: {_codes(new) or 'none'}",
        ),
        DriftStatistic(
            PRODUCT_MIX, None, "vanished codes", float(len(vanished)), 0.0, bool(vanished),
            f"{len(vanished)} product code(s) of the reference week missing this week: {_codes(vanished) or 'none'}",
        ),
    ]


def _code(code: str) -> str:
    # A reference week from before the product-code rule may hold any code: one too long is cut.
    return code if len(code) <= MESSAGES.quote_prefix_chars else quote(code)


def _codes(codes: List[str]) -> str:
    return listed([_code(code) for code in codes[:MESSAGES.max_codes_named]], total=len(codes))


def performance_drift(live: Model, current: pd.DataFrame) -> List[DriftStatistic]:
    """The live model's MAE on the new week's rows (the products it knows), overall and per
    product with at least DRIFT.min_product_rows rows, as a ratio of the test MAE in its lineage."""
    orders, codes = _orders_and_codes(current)
    labels = pd.to_numeric(current[LABEL_COLUMN], errors="coerce").to_numpy(dtype=np.float64)
    known = np.isin(codes, live.product_codes) & np.isfinite(orders) & np.isfinite(labels)
    if not known.any():
        return []
    errors = np.abs(live.predict(list(codes[known]), orders[known]) - labels[known])
    recorded = live.metrics.mean_absolute_error
    statistics = [_performance_statistic(None, errors, recorded, DRIFT.performance_mae_ratio_threshold, live)]
    for code in sorted(set(codes[known])):
        product_errors = errors[codes[known] == code]
        if len(product_errors) >= DRIFT.min_product_rows:
            statistics.append(_performance_statistic(
                code, product_errors, recorded, DRIFT.product_performance_mae_ratio_threshold, live))
    return statistics


def compute_drift(current: pd.DataFrame, reference: Optional[pd.DataFrame], reference_uri: Optional[str],
                  live: Optional[Model]) -> DriftReport:
    """Every drift statistic of the new week: against the reference week (the live model's
    training week) when there is one, and the live model's performance when there is one."""
    statistics: List[DriftStatistic] = []
    notes: List[str] = []
    if reference is not None:
        statistics += orders_drift(reference, current) + product_mix_drift(reference, current)
    else:
        notes.append("no reference week: orders_placed and product-mix drift not computed")
    if live is not None:
        statistics += performance_drift(live, current)
    else:
        notes.append("no live model: performance drift not computed")
    return DriftReport(reference_uri, tuple(statistics), tuple(notes))


def log_findings(report: DriftReport) -> None:
    """One WARNING line per drift finding; one INFO line when there is none."""
    for finding in report.findings:
        log.warning(finding.warning())
    for note in report.notes:
        log.info(note)
    if report.statistics and not report.findings:
        log.info(f"no drift: {len(report.statistics)} statistic(s) within their thresholds "
                 f"against {report.reference or 'the live model'}")


def _distribution_statistics(
    product: Optional[str], reference: np.ndarray, current: np.ndarray, psi_threshold: float
) -> List[DriftStatistic]:
    psi = population_stability_index(reference, current)
    ks = ks_2samp(reference, current)
    rows = f"{len(current)} rows this week, {len(reference)} in the reference week"
    means = f"mean {np.mean(current):.1f} against {np.mean(reference):.1f}"
    return [
        DriftStatistic(ORDERS_PLACED, product, "PSI", psi, psi_threshold, psi > psi_threshold,
                       f"PSI {psi:.3f} (threshold {psi_threshold}); {means}; {rows}"),
        DriftStatistic(ORDERS_PLACED, product, "KS p-value", float(ks.pvalue), DRIFT.ks_p_value_threshold,
                       float(ks.pvalue) < DRIFT.ks_p_value_threshold,
                       f"KS statistic {float(ks.statistic):.3f}, p-value {float(ks.pvalue):.2g} "
                       f"(threshold {DRIFT.ks_p_value_threshold}); {means}; {rows}"),
    ]


def _performance_statistic(
    product: Optional[str], errors: np.ndarray, recorded: float, threshold: float, live: Model
) -> DriftStatistic:
    mae = float(np.mean(errors))
    ratio = mae / recorded if recorded > 0 else float("inf")
    rows = f"this week's {product} rows" if product else "this week's rows"
    return DriftStatistic(
        PERFORMANCE, product, "MAE ratio", ratio, threshold, ratio > threshold,
        f"the live model {live.artefact_id}'s MAE on {rows} is {mae:.3f} hours, {ratio:.2f}x its "
        f"recorded test MAE {recorded:.3f} (threshold {threshold}x; {len(errors)} rows)",
    )


def _orders_and_codes(data: pd.DataFrame) -> Tuple[np.ndarray, np.ndarray]:
    orders = pd.to_numeric(data[ORDERS_COLUMN], errors="coerce").to_numpy(dtype=np.float64)
    codes = data[PRODUCT_COLUMN].astype(str).str.strip().to_numpy(dtype=object)
    keep = np.isfinite(orders)
    return orders[keep], codes[keep]


def _shares(bin_index: np.ndarray, n_bins: int) -> np.ndarray:
    return np.bincount(bin_index, minlength=n_bins) / len(bin_index)


def _psi(reference: np.ndarray, current: np.ndarray) -> float:
    ref = np.clip(reference, DRIFT.psi_floor, None)
    cur = np.clip(current, DRIFT.psi_floor, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))
