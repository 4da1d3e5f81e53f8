"""What the served estimate is worth: the calibration's effect on MAE and dips, the upper bound's
coverage on next week's orders, and where it fails.

Weeks 0..N are consecutive synthetic weeks (`generate_weeks`, seeds SEED..SEED+N; with the
default seed 42, week 3 is the notebook's week). Each week 0..N-1 is prepared and tuned as the
train stage does (`prepare_data`, `tune_hyperparameters` on the full grid) and its model built
with `build_served_model` (calibration on, the default coverage):

- per week: the test MAE of the tree and of the served (calibrated) estimate, and the dips of
  each over 0..(largest orders_placed + TRAIN.dips_beyond_orders) in TRAIN.dips_step_orders steps;
- next-week coverage: the share of week t+1's orders (all of them) whose hours_to_dispatch is
  at or below week t's model's upper_hours_to_dispatch;
- week 3 (the notebook's week with the default seed) cross-fitted: split into 5 folds, each
  fold scored by a model trained (with its own 80/20 split, tree and bound) on the other four;
- the tests' week (seed 4): MAE and dips as above;
- drifted weeks: week t's model on week t+1 made with every product slower (slopes times 1.1,
  1.3) and with busier days (orders_placed times 1.5): where the claimed coverage fails;
- with --csv PATH, one given week instead (the seed article's 1,000 rows, for one): read as the
  train stage reads a dataset, its MAE and dips as above and its cross-fitted coverage.

Usage, from the repository root:

    PYTHONPATH=. python benchmarks/estimates.py --weeks 32 --json benchmarks/results/estimates.json
    PYTHONPATH=. python benchmarks/estimates.py --csv seed_article_week.csv \\
        --json benchmarks/results/estimates_article.json
"""
import argparse
import json
import logging
import shlex
import sys
from typing import Any, Dict, List

import numpy as np
import pandas as pd

from pipeline.artefact.features import LABEL_COLUMN, ORDERS_COLUMN, PRODUCT_COLUMN
from pipeline.artefact.model import Model
from pipeline.local.synthetic import PRODUCT_SLOPES, generate_orders, generate_weeks
from pipeline.settings import LAYOUT, TRAIN
from pipeline.storage.datasets import Dataset, read_csv_strictly
from pipeline.train.stage import build_served_model
from pipeline.train.steps import PreparedData, measure_monotonicity, prepare_data
from pipeline.train.tuning import HYPERPARAM_GRID, tune_hyperparameters

FOLDS = 5
# The tests' week (tests/helpers.py's TEST_WEEK_SEED, "a week like the notebook's").
TESTS_WEEK_SEED = 4


def train_week(frame: pd.DataFrame, name: str) -> "tuple[Model, PreparedData]":
    """The model the train stage would build on `frame` (not persisted, no gates)."""
    data = prepare_data(frame)
    search = tune_hyperparameters(data.X_train, data.y_train, HYPERPARAM_GRID)
    dataset = Dataset(frame, "benchmark", f"{LAYOUT.datasets_prefix}{name}.csv",
                      pd.Timestamp("2021-01-01", tz="UTC").to_pydatetime(), "etag", None)
    return build_served_model(search.estimator, search.best_params, data, dataset), data


def coverage(model: Model, frame: pd.DataFrame) -> Dict[str, float]:
    """Share of the frame's orders at or below the model's upper bound, and how many were extrapolated."""
    estimates = model.estimate(frame[PRODUCT_COLUMN].tolist(), frame[ORDERS_COLUMN].to_numpy(dtype=np.float64))
    assert estimates.upper_hours_to_dispatch is not None
    labels = frame[LABEL_COLUMN].to_numpy()
    return {"coverage": float(np.mean(labels <= estimates.upper_hours_to_dispatch)),
            "extrapolated": float(np.mean(estimates.extrapolated)),
            "coverage_inside_range": float(np.mean((labels <= estimates.upper_hours_to_dispatch)
                                                   [~estimates.extrapolated]))}


def week_figures(model: Model, data: PreparedData) -> Dict[str, Any]:
    """MAE and dips of the tree and of the served estimate."""
    tree_dips = measure_monotonicity(model.estimator, data, TRAIN.dips_step_orders, TRAIN.dips_beyond_orders)
    served_dips = measure_monotonicity(model.served_estimator, data, TRAIN.dips_step_orders,
                                       TRAIN.dips_beyond_orders)
    assert model.tree_metrics is not None and model.upper_bound is not None
    return {
        "tree_mae": model.tree_metrics.mean_absolute_error,
        "served_mae": model.metrics.mean_absolute_error,
        "mae_ratio": model.metrics.mean_absolute_error / model.tree_metrics.mean_absolute_error,
        "tree_r2": model.tree_metrics.r_squared,
        "served_r2": model.metrics.r_squared,
        "tree_dips": tree_dips.total_decreasing_steps,
        "tree_largest_drop": tree_dips.largest_drop_hours,
        "served_dips": served_dips.total_decreasing_steps,
        "margin_hours": model.upper_bound.margin_hours,
    }


def cross_fitted_coverage(frame: pd.DataFrame, seed: int) -> List[float]:
    """Coverage of each fold of `frame` under a model trained on the other folds."""
    folds = np.random.default_rng(seed).permutation(len(frame)) % FOLDS
    shares = []
    for fold in range(FOLDS):
        model, _ = train_week(frame[folds != fold].reset_index(drop=True), f"fold-{fold}")
        shares.append(coverage(model, frame[folds == fold])["coverage"])
    return shares


def report(summary: Dict[str, Any], **details: Any) -> Dict[str, Any]:
    """Print the summary a line a figure; the result to store, with the command that produced it."""
    for name, value in summary.items():
        print(f"{name}: {value}", flush=True)
    return {"command": "PYTHONPATH=. python " + shlex.join(sys.argv), "summary": summary, **details}


def run(weeks: int, seed: int) -> Dict[str, Any]:
    frames = [week.data for week in generate_weeks(weeks + 1, seed=seed)]
    per_week: List[Dict[str, Any]] = []
    drifted: List[Dict[str, Any]] = []
    for t in range(weeks):
        model, data = train_week(frames[t], f"week-{t}")
        figures = {"week": t, "seed": seed + t, **week_figures(model, data), **coverage(model, frames[t + 1])}
        per_week.append(figures)
        print(f"week {t:2d} (seed {seed + t})  tree MAE {figures['tree_mae']:.3f}  served MAE "
              f"{figures['served_mae']:.3f} ({figures['mae_ratio']:.3f}x)  dips {figures['tree_dips']:3d} -> "
              f"{figures['served_dips']}  margin {figures['margin_hours']:.3f}h  next-week coverage "
              f"{figures['coverage']:.3f} ({figures['extrapolated']:.3f} extrapolated)", flush=True)
        if t < 10:
            next_seed = seed + t + 1
            for name, slopes, busier in (("slopes x1.1", 1.1, 1.0), ("slopes x1.3", 1.3, 1.0),
                                         ("orders_placed x1.5", 1.0, 1.5)):
                changed = generate_orders(seed=next_seed,
                                          product_slopes={c: s * slopes for c, s in PRODUCT_SLOPES.items()})
                if busier != 1.0:
                    orders = np.round(changed[ORDERS_COLUMN] * busier)
                    slope = changed[PRODUCT_COLUMN].map(PRODUCT_SLOPES)
                    changed = changed.assign(**{
                        ORDERS_COLUMN: orders.astype(np.int64),
                        LABEL_COLUMN: np.clip(changed[LABEL_COLUMN] + slope * (orders - changed[ORDERS_COLUMN]),
                                              0.0, None)})
                drifted.append({"week": t, "change": name, **coverage(model, changed)})
    tests_model, tests_data = train_week(generate_orders(seed=TESTS_WEEK_SEED), "tests-week")
    # With the default seed 42, week 3 (seed 45) is the notebook's week.
    crossfit = cross_fitted_coverage(frames[3], seed) if weeks > 3 else []
    ratios = np.array([w["mae_ratio"] for w in per_week])
    shares = np.array([w["coverage"] for w in per_week])
    summary = {
        "weeks": weeks,
        "served_dips_total": int(sum(w["served_dips"] for w in per_week)),
        "tree_dips_range": [min(w["tree_dips"] for w in per_week), max(w["tree_dips"] for w in per_week)],
        "mae_ratio_mean": float(ratios.mean()),
        "mae_ratio_worst": float(ratios.max()),
        "mae_ratio_best": float(ratios.min()),
        "weeks_worse_than_1_02": int((ratios > 1.02).sum()),
        "coverage_mean": float(shares.mean()),
        "coverage_sd": float(shares.std(ddof=1)),
        "coverage_min": float(shares.min()),
        "coverage_max": float(shares.max()),
        "week_3": per_week[3] if weeks > 3 else None,
        "week_3_cross_fitted_coverage": crossfit,
        "tests_week": week_figures(tests_model, tests_data),
        "drifted": {name: float(np.mean([d["coverage"] for d in drifted if d["change"] == name]))
                    for name in sorted({d["change"] for d in drifted})},
    }
    return report(summary, per_week=per_week, drifted=drifted)


def run_csv(path: str, seed: int) -> Dict[str, Any]:
    """MAE, dips and cross-fitted coverage of the week in the CSV file at `path`."""
    with open(path, "rb") as csv_file:
        frame = read_csv_strictly(csv_file.read(), path)
    model, data = train_week(frame, "given-week")
    figures = week_figures(model, data)
    shares = cross_fitted_coverage(frame, seed)
    summary = {"rows": len(frame), **figures, "cross_fitted_coverage": shares,
               "cross_fitted_coverage_mean": float(np.mean(shares)),
               "cross_fitted_coverage_sd": float(np.std(shares, ddof=1))}
    return report(summary)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weeks", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--csv", default=None, help="measure this one week instead of synthetic ones")
    parser.add_argument("--json", default=None, help="write every figure to this file")
    arguments = parser.parse_args()
    logging.disable(logging.WARNING)
    result = run_csv(arguments.csv, arguments.seed) if arguments.csv else run(arguments.weeks, arguments.seed)
    if arguments.json:
        with open(arguments.json, "w") as out:
            json.dump(result, out, indent=1)
