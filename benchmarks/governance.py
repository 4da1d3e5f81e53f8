"""Governance benchmark: how often the champion gate and each drift statistic fire on healthy
weeks of the same process, and whether they fire on weeks that really changed.

Weeks 0..N are synthetic weeks of the same process (`generate_orders`, seeds SEED..SEED+N).
Each week is trained as the train stage trains it (`prepare_data`, `tune_hyperparameters` on
the full grid, `build_model`); week i's model is the champion of week i+1:

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
  how often the expected warning fires.

Usage, from the repository root:

    PYTHONPATH=. python benchmarks/governance.py --weeks 100 --json benchmarks/results/governance.json
"""
import argparse
import json
import shlex
import sys
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Dict, List, Tuple

import numpy as np
import pandas as pd

from pipeline.champion import compare_with_champion
from pipeline.drift import compute_drift
from pipeline.features import ORDERS_COLUMN, PRODUCT_COLUMN
from pipeline.model import Model
from pipeline.storage import Dataset
from pipeline.synthetic import PRODUCT_SLOPES, generate_orders
from pipeline.training import PreparedData, build_model, evaluate, prepare_data, test_rows
from pipeline.tuning import HYPERPARAM_GRID, tune_hyperparameters

TOLERANCES = (0.0, 0.05, 0.10, 0.15, 0.20, 0.25)
WORSE_BY = 0.25


def train_week(data: pd.DataFrame, seed: int) -> Tuple[Model, PreparedData]:
    """A model trained on one week exactly as the train stage trains it (full grid, n_jobs=1)."""
    prepared = prepare_data(data)
    search = tune_hyperparameters(prepared.X_train, prepared.y_train, HYPERPARAM_GRID, n_jobs=1)
    metrics = evaluate(search.estimator, prepared)
    stamp = datetime(2026, 1, 1, tzinfo=timezone.utc)
    dataset = Dataset(data, "benchmark", f"datasets/week_{seed}.csv", stamp, "etag", None)
    return build_model(search.estimator, search.best_params, prepared, metrics, dataset), prepared


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


def run(weeks: int, seed: int) -> Dict[str, Any]:
    started = time.monotonic()
    models: List[Tuple[Model, PreparedData, pd.DataFrame]] = []
    for week in range(weeks + 1):
        data = generate_orders(1000, seed=seed + week)
        model, prepared = train_week(data, seed + week)
        models.append((model, prepared, data))
        print(f"week {week}: r²={model.metrics.r_squared:.4f} MAE={model.metrics.mean_absolute_error:.4f} "
              f"{model.hyperparameters}", flush=True)
    differences: List[float] = []
    refused: Counter = Counter()
    worse_refused: Counter = Counter()
    drift_fired: Counter = Counter()
    weeks_with_any_warning = 0
    statistic_counts: Counter = Counter()
    for (champion, _, reference), (challenger, prepared, current) in zip(models, models[1:]):
        orders, codes = test_rows(prepared)
        comparison = compare_with_champion(challenger, champion, orders, codes, prepared.y_test, 0.0)
        assert comparison is not None
        differences.append(comparison.relative_difference)
        worse_mae = worse_challenger(comparison.champion_mae, challenger.predict(codes, orders), prepared.y_test)
        for tolerance in TOLERANCES:
            refused[tolerance] += replace(comparison, tolerance=tolerance).refused
            worse_refused[tolerance] += replace(comparison, tolerance=tolerance, challenger_mae=worse_mae).refused
        drift = compute_drift(current, reference, "reference", champion)
        for statistic in drift.statistics:
            key = f"{statistic.kind}{' per product' if statistic.product else ''}: {statistic.statistic}"
            statistic_counts[key] += 1
            drift_fired[key] += statistic.drifted
        weeks_with_any_warning += bool(drift.findings)
    pairs = weeks
    scenarios = {}
    for name, (make, expected) in SCENARIOS.items():
        hits = 0
        for (champion, _, reference), week in zip(models, range(pairs)):
            changed = make(seed + 10_000 + week)
            findings = compute_drift(changed, reference, "reference", champion).findings
            hits += any(expected in f.warning() for f in findings)
        scenarios[name] = {"expected_warning_contains": expected, "weeks": pairs, "fired": hits,
                           "rate": hits / pairs}
    spread = np.array(differences)
    return {
        "command": "PYTHONPATH=. python " + " ".join(shlex.quote(a) for a in sys.argv),
        "weeks_trained": weeks + 1,
        "pairs": pairs,
        "seconds": time.monotonic() - started,
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
        "drift_detection": scenarios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weeks", type=int, default=100, help="pairs of consecutive healthy weeks")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args()
    results = run(args.weeks, args.seed)
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
