"""How the data scientist's method does across synthetic weeks (the spread quoted in docs/data-and-model.md).

Usage: PYTHONPATH=. python benchmarks/model_quality.py [--seeds 20] [--rows 1000]
"""
import argparse
import logging
from typing import List, Sequence

from pipeline.local.synthetic import generate_orders
from pipeline.train import steps, tuning


def run(seeds: Sequence[int], rows: int) -> List[str]:
    """Train and test the tuned tree on each seed's week; one line of figures per week."""
    lines = []
    for seed in seeds:
        data = steps.prepare_data(generate_orders(rows, seed=seed))
        search = tuning.tune_hyperparameters(data.X_train, data.y_train, tuning.HYPERPARAM_GRID)
        metrics = steps.evaluate(search.estimator, data)
        lines.append(f"seed {seed:3d}  r2 {metrics.r_squared:.4f}  MAE {metrics.mean_absolute_error:.3f}  "
                     f"{search.best_params}")
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--rows", type=int, default=1000)
    arguments = parser.parse_args()
    logging.disable(logging.INFO)
    for line in run(range(arguments.seeds), arguments.rows):
        print(line, flush=True)
