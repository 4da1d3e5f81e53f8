"""Governance benchmark: how often every gate and warning of the train stage fires on healthy
weeks of the same process, and whether drift warnings fire on weeks that really changed.

Weeks 0..N are synthetic weeks of the same process (`generate_orders`, seeds SEED..SEED+N).
Each week is read and trained as the train stage reads and trains it: uploaded as CSV to a
local S3 server (`put_dataset`) and read back with `get_latest_dataset` (the size limit and
the strict CSV parse), then `prepare_data` (dataset validation, look-alike product codes),
`tune_hyperparameters` on the full grid and `build_served_model` (what the stage serves: the
calibrated estimate, which the gates judge); week i's model is the
champion of week i+1:

- the per-week gates, on every week: the dataset read and validation (refusals, and WARNING
  lines from validation), each of the three logic checks (`logic_check_failures`), the r²
  error threshold and the r² warning (`r_squared_failure`, with the deployment's thresholds
  and, for the warning, candidate thresholds below it);

- champion gate, no drift: week i+1's model against week i's on week i+1's held-out rows
  (`compare_with_champion`); the false refusal rate for each candidate tolerance, and the
  spread of the relative MAE difference;
- champion gate, a challenger 25% worse: week i+1's model with every estimate on those rows
  moved by the same number of hours, chosen so that its MAE is exactly 1.25 times the
  champion's; how often each tolerance refuses it;
- drift, no drift: every drift statistic of week i+1 against week i and week i's model
  (`compute_drift`); how often each kind of statistic fires, and how often a week gets any
  drift warning at all;
- drift, real changes: the same against changed weeks (orders_placed shifted to busier days,
  SKU001's share raised to half the orders, SKU003's slope doubled, every product 30% slower);
  how often the expected warning fires;
- all gates together (`decide`, with the default champion tolerance) on each healthy pair: how
  often a healthy week would be refused, and how often it gets any WARNING line at all.

Usage, from the repository root:

    PYTHONPATH=. python benchmarks/governance.py --weeks 40 --json benchmarks/results/governance.json
"""
import argparse
import json
import logging
import os
import shlex
import sys
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import pandas as pd

from pipeline.artefact.features import ORDERS_COLUMN, PRODUCT_COLUMN
from pipeline.artefact.model import Model
from pipeline.local.local_s3 import LocalS3
from pipeline.local.synthetic import PRODUCT_SLOPES, generate_orders
from pipeline.settings import TRAIN
from pipeline.storage.client import StorageError
from pipeline.storage.datasets import Dataset, get_latest_dataset, put_dataset
from pipeline.train.champion import compare_with_champion, decide
from pipeline.train.stage import build_served_model
from pipeline.train.drift import compute_drift, log_findings
from pipeline.train.steps import (
    DatasetError,
    PreparedData,
    logic_check_failures,
    prepare_data,
    r_squared_failure,
    test_rows,
)
from pipeline.train.tuning import HYPERPARAM_GRID, tune_hyperparameters

TOLERANCES = (0.0, 0.05, 0.10, 0.15, 0.20, 0.25)
WORSE_BY = 0.25
# The deployment's r² thresholds (bodywork.yaml: `time-to-dispatch 0.9 0.95`), and lower
# candidates for the warning, to see what each would cost on healthy weeks.
R2_ERROR_THRESHOLD, R2_WARNING_THRESHOLD = 0.9, 0.95
R2_WARNING_CANDIDATES = (0.95, 0.94, 0.93, 0.92, 0.91)
LOGIC_CHECKS = ("estimate rises from 100 to 150 orders", "no negative estimate", "no estimate above 1.25 x")
# Healthy weeks are dated in the past (keys dated in the future are ignored), one a week.
FIRST_WEEK = datetime(2025, 1, 3, 23, 0, tzinfo=timezone.utc)


class WarningLines(logging.Handler):
    """Keeps the WARNING (and worse) records the pipeline's modules log, to count them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("pipeline"):
            self.records.append(record)

    def take(self) -> List[str]:
        """The messages kept since the last call, and forget them."""
        messages = [r.getMessage() for r in self.records]
        self.records.clear()
        return messages


class HealthyWeek(NamedTuple):
    """One healthy week as the train stage sees it, and what its per-week gates said."""

    week: int
    model: Model
    prepared: PreparedData
    data: pd.DataFrame
    logic_failures: List[str]
    r_squared_failure: Optional[str]
    validation_warnings: List[str]
    r_squared_warnings: List[str]
    headroom: Dict[str, float]


def read_week(bucket: str, data: pd.DataFrame, week: int) -> Dataset:
    """Upload a week as data engineering drops it and read it back as the train stage does.

    Raises:
        StorageError: the read gate refused it (size limit, unreadable or malformed CSV).
    """
    put_dataset(bucket, data, FIRST_WEEK + timedelta(weeks=week))
    return get_latest_dataset(bucket)


def train_week(dataset: Dataset) -> Tuple[Model, PreparedData]:
    """A model trained on one week exactly as the train stage trains it (full grid, n_jobs=1).

    Raises:
        DatasetError: the week failed dataset validation.
    """
    prepared = prepare_data(dataset.data)
    search = tune_hyperparameters(prepared.X_train, prepared.y_train, HYPERPARAM_GRID, n_jobs=1)
    return build_served_model(search.estimator, search.best_params, prepared, dataset), prepared


def logic_check_of(failure: str) -> str:
    """Which of LOGIC_CHECKS a failure message of `logic_check_failures` is about."""
    if f"estimate at {TRAIN.check_orders_high} orders" in failure:
        return LOGIC_CHECKS[0]
    if "negative estimate" in failure:
        return LOGIC_CHECKS[1]
    if f"above {TRAIN.max_estimate_to_label_ratio} x" in failure:
        return LOGIC_CHECKS[2]
    raise ValueError(f"a logic check this benchmark does not know: {failure}")


def logic_headroom(model: Model, prepared: PreparedData) -> Dict[str, float]:
    """How far a week's model is from failing each logic check: the smallest rise (hours) from
    100 to 150 orders over the products, the lowest test estimate, and the highest test estimate
    as a multiple of the largest test label (with the largest training label's multiple of it:
    a tree's estimate is the mean or median of some training labels, never above the largest)."""
    codes = list(prepared.encoding.codes)
    low = model.predict(codes, np.full(len(codes), float(TRAIN.check_orders_low)))
    high = model.predict(codes, np.full(len(codes), float(TRAIN.check_orders_high)))
    estimates = model.served_estimator.predict(prepared.X_test)
    return {
        "smallest_rise_hours": float(np.min(high - low)),
        "lowest_test_estimate_hours": float(np.min(estimates)),
        "highest_estimate_over_largest_label": float(np.max(estimates) / np.max(prepared.y_test)),
        "largest_train_label_over_largest_test_label": float(np.max(prepared.y_train) / np.max(prepared.y_test)),
    }


def shifted_to_busier_days(seed: int) -> pd.DataFrame:
    """A week of the same process whose orders come from busier days: rows drawn with a weight
    that grows with orders_placed, so the orders-hours relation is unchanged."""
    pool = generate_orders(4000, seed=seed)
    weights = (pool[ORDERS_COLUMN] + 20.0).to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(pool), size=1000, replace=False, p=weights / weights.sum())
    return pool.iloc[np.sort(rows)].reset_index(drop=True)


def sku001_half_of_orders(seed: int) -> pd.DataFrame:
    """A week where SKU001 has half the orders (a fifth before)."""
    pool = generate_orders(4000, seed=seed)
    sku001 = pool[pool[PRODUCT_COLUMN] == "SKU001"].head(500)
    others = pool[pool[PRODUCT_COLUMN] != "SKU001"].head(500)
    return pd.concat([sku001, others]).reset_index(drop=True)


def slope_doubled(seed: int, code: str = "SKU003") -> pd.DataFrame:
    return generate_orders(1000, seed=seed, product_slopes={**PRODUCT_SLOPES, code: 2 * PRODUCT_SLOPES[code]})


def all_slower(seed: int, factor: float = 1.3) -> pd.DataFrame:
    return generate_orders(1000, seed=seed, product_slopes={c: s * factor for c, s in PRODUCT_SLOPES.items()})


SCENARIOS = {
    "orders_placed from busier days": (shifted_to_busier_days, "orders_placed drift"),
    "SKU001 half of the orders": (sku001_half_of_orders, "product mix drift"),
    "SKU003 slope doubled": (slope_doubled, "performance drift for SKU003"),
    "every product 30% slower": (all_slower, "performance drift:"),
}


def worse_challenger(champion_errors_mean: float, predictions: np.ndarray, labels: np.ndarray) -> float:
    """The MAE of the challenger's estimates all moved by one offset (found by bisection) so
    that their MAE is (1 + WORSE_BY) times the champion's."""
    target = (1.0 + WORSE_BY) * champion_errors_mean
    low, high = 0.0, 50.0
    for _ in range(100):
        middle = (low + high) / 2
        if np.mean(np.abs(predictions + middle - labels)) < target:
            low = middle
        else:
            high = middle
    return float(np.mean(np.abs(predictions + high - labels)))


def run(weeks: int, seed: int, bucket: str) -> Dict[str, Any]:
    started = time.monotonic()
    load_at_start = os.getloadavg()
    lines = WarningLines()
    logging.getLogger().addHandler(lines)
    healthy: List[HealthyWeek] = []
    read_refused: List[str] = []
    validation_refused: List[str] = []
    r2_warned: Counter = Counter()
    for week in range(weeks + 1):
        data = generate_orders(1000, seed=seed + week)
        lines.take()
        try:
            dataset = read_week(bucket, data, week)
        except StorageError as error:
            read_refused.append(f"week {week}: {error}")
            continue
        try:
            model, prepared = train_week(dataset)
        except DatasetError as error:
            validation_refused.append(f"week {week}: {error}")
            continue
        validation_warnings = lines.take()
        logic = logic_check_failures(model.served_estimator, prepared)
        r2 = r_squared_failure(model.metrics, R2_ERROR_THRESHOLD, R2_WARNING_THRESHOLD)
        r2_warnings = lines.take()
        warnings = validation_warnings + r2_warnings
        for candidate in R2_WARNING_CANDIDATES:
            r_squared_failure(model.metrics, R2_ERROR_THRESHOLD, candidate)
            r2_warned[candidate] += bool(lines.take())
        healthy.append(HealthyWeek(week, model, prepared, dataset.data, logic, r2, validation_warnings, r2_warnings,
                                   logic_headroom(model, prepared)))
        print(f"week {week}: r²={model.metrics.r_squared:.4f} MAE={model.metrics.mean_absolute_error:.4f} "
              f"{model.hyperparameters}" + "".join(f"\n  logic check failed: {f}" for f in logic)
              + (f"\n  r² gate: {r2}" if r2 else "") + "".join(f"\n  WARNING: {w}" for w in warnings), flush=True)
    differences: List[float] = []
    refused: Counter = Counter()
    worse_refused: Counter = Counter()
    drift_fired: Counter = Counter()
    weeks_with_any_warning = 0
    statistic_counts: Counter = Counter()
    refused_by_all_gates = 0
    failed_gates: Counter = Counter()
    weeks_with_any_warning_line = 0
    for old, new in zip(healthy, healthy[1:]):
        champion, challenger, prepared = old.model, new.model, new.prepared
        orders, codes = test_rows(prepared)
        comparison = compare_with_champion(challenger, champion, orders, codes, prepared.y_test, 0.0)
        assert comparison is not None
        differences.append(comparison.relative_difference)
        worse_mae = worse_challenger(comparison.champion_mae, challenger.predict(codes, orders), prepared.y_test)
        for tolerance in TOLERANCES:
            refused[tolerance] += replace(comparison, tolerance=tolerance).refused
            worse_refused[tolerance] += replace(comparison, tolerance=tolerance, challenger_mae=worse_mae).refused
        drift = compute_drift(new.data, old.data, "reference", champion)
        log_findings(drift)
        drift_lines = lines.take()
        for statistic in drift.statistics:
            key = f"{statistic.kind}{' per product' if statistic.product else ''}: {statistic.statistic}"
            statistic_counts[key] += 1
            drift_fired[key] += statistic.drifted
        weeks_with_any_warning += bool(drift.findings)
        decision = decide(new.logic_failures, new.r_squared_failure,
                          replace(comparison, tolerance=TRAIN.default_champion_tolerance))
        refused_by_all_gates += not decision.accepted
        failed_gates.update(failure.split(":")[0] for failure in decision.failures)
        weeks_with_any_warning_line += bool(new.validation_warnings or new.r_squared_warnings or drift_lines)
    logging.getLogger().removeHandler(lines)
    pairs = len(healthy) - 1
    scenarios = {}
    for name, (make, expected) in SCENARIOS.items():
        hits = 0
        for old, week in zip(healthy, range(pairs)):
            changed = make(seed + 10_000 + week)
            findings = compute_drift(changed, old.data, "reference", old.model).findings
            hits += any(expected in f.warning() for f in findings)
        scenarios[name] = {"expected_warning_contains": expected, "weeks": pairs, "fired": hits,
                           "rate": hits / pairs}
    spread = np.array(differences)
    trained = len(healthy)
    logic_failed = Counter(check for week in healthy for check in set(map(logic_check_of, week.logic_failures)))
    r_squared = np.array([week.model.metrics.r_squared for week in healthy])
    return {
        "command": "PYTHONPATH=. python " + " ".join(shlex.quote(a) for a in sys.argv),
        "load_average_1_5_15_at_start": load_at_start,
        "load_average_1_5_15_at_end": os.getloadavg(),
        "weeks_generated": weeks + 1,
        "weeks_trained": trained,
        "pairs": pairs,
        "seconds": time.monotonic() - started,
        "per_week_gates": {
            "weeks": weeks + 1,
            "dataset_read_refused": len(read_refused),
            "dataset_validation_refused": len(validation_refused),
            "dataset_refusals": read_refused + validation_refused,
            "weeks_with_warning_lines_reading_validating_training":
                sum(bool(week.validation_warnings) for week in healthy),
            "warning_lines_reading_validating_training": [w for week in healthy for w in week.validation_warnings],
            "logic_checks": {
                "weeks": trained,
                "failed": {check: logic_failed[check] for check in LOGIC_CHECKS},
                "weeks_failing_any": sum(bool(week.logic_failures) for week in healthy),
                "failures": [f"week {week.week}: {f}" for week in healthy for f in week.logic_failures],
                "headroom": {
                    "smallest_rise_hours_min": min(w.headroom["smallest_rise_hours"] for w in healthy),
                    "lowest_test_estimate_hours_min": min(w.headroom["lowest_test_estimate_hours"] for w in healthy),
                    "highest_estimate_over_largest_label_max":
                        max(w.headroom["highest_estimate_over_largest_label"] for w in healthy),
                },
                "headroom_per_week": {str(w.week): w.headroom for w in healthy},
            },
            "r_squared": {
                "weeks": trained,
                "min": float(r_squared.min()), "p05": float(np.percentile(r_squared, 5)),
                "p50": float(np.percentile(r_squared, 50)), "max": float(r_squared.max()),
                "error_threshold": R2_ERROR_THRESHOLD,
                "refused_by_error_threshold": sum(week.r_squared_failure is not None for week in healthy),
                "warning_threshold": R2_WARNING_THRESHOLD,
                "warned_by_threshold": {str(t): r2_warned[t] for t in R2_WARNING_CANDIDATES},
            },
        },
        "champion_no_drift": {
            "relative_mae_difference": {
                "mean": float(spread.mean()), "p50": float(np.percentile(spread, 50)),
                "p95": float(np.percentile(spread, 95)), "p99": float(np.percentile(spread, 99)),
                "max": float(spread.max()), "min": float(spread.min()),
            },
            "false_refusal_rate": {str(t): refused[t] / pairs for t in TOLERANCES},
        },
        "champion_25_percent_worse": {"refusal_rate": {str(t): worse_refused[t] / pairs for t in TOLERANCES}},
        "drift_no_drift": {
            "false_alarm_rate": {k: drift_fired[k] / statistic_counts[k] for k in sorted(statistic_counts)},
            "statistics_per_week": {k: statistic_counts[k] / pairs for k in sorted(statistic_counts)},
            "weeks_with_any_drift_warning": weeks_with_any_warning / pairs,
        },
        "all_gates_no_drift": {
            "champion_tolerance": TRAIN.default_champion_tolerance,
            "r_squared_thresholds": [R2_ERROR_THRESHOLD, R2_WARNING_THRESHOLD],
            "pairs": pairs,
            "refused": refused_by_all_gates,
            "failed_gates": dict(failed_gates),
            "weeks_with_any_warning_line": weeks_with_any_warning_line,
        },
        "drift_detection": scenarios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weeks", type=int, default=100, help="pairs of consecutive healthy weeks")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args()
    with LocalS3() as s3:
        s3.point_environment_here()
        results = run(args.weeks, args.seed, s3.create_bucket("governance-benchmark"))
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
