"""Synthetic weekly orders that follow the data scientist's findings.

Per product the hours to dispatch are linear in the orders already placed that day, with
slopes 0.075 to 0.175 hours per order for SKU001 to SKU005, no intercept, homoscedastic
noise with sd 1 hour, clipped at 0. `orders_placed` is a skewed count between 0 and 320
with a mean near 73. Tests, the local run, the notebook and the benchmarks make their data
here, seeded, so every run sees the same numbers.
"""
from datetime import datetime, timedelta
from typing import Dict, List, Mapping, NamedTuple

import numpy as np
import pandas as pd

from pipeline.artefact.features import DATASET_COLUMNS, LABEL_COLUMN, ORDERS_COLUMN, PRODUCT_COLUMN
from pipeline.settings import LOCAL

PRODUCT_SLOPES: Dict[str, float] = {
    "SKU001": 0.075,
    "SKU002": 0.100,
    "SKU003": 0.125,
    "SKU004": 0.150,
    "SKU005": 0.175,
}


class WeeklyDataset(NamedTuple):
    """One week's synthetic file: when it was dropped and what it holds."""

    timestamp: datetime
    data: pd.DataFrame


def generate_orders(
    n_rows: int = LOCAL.synthetic_rows_per_week,
    seed: int = 42,
    product_slopes: Mapping[str, float] = PRODUCT_SLOPES,
    noise_sd: float = LOCAL.synthetic_noise_sd_hours,
) -> pd.DataFrame:
    """Make one week of orders.

    Args:
        n_rows: how many orders.
        seed: seed of the random generator; the same seed gives the same frame.
        product_slopes: hours per order for each product code.
        noise_sd: standard deviation of the noise, in hours.

    Returns:
        A frame with the columns `hours_to_dispatch, orders_placed, product_code`, in the
        order data engineering delivers them.

    Raises:
        ValueError: if n_rows < 1 or there are no products.
    """
    if n_rows < 1:
        raise ValueError(f"n_rows must be at least 1, got {n_rows}")
    if not product_slopes:
        raise ValueError("at least one product is needed")
    rng = np.random.default_rng(seed)
    codes = np.array(sorted(product_slopes))
    slopes = np.array([product_slopes[code] for code in codes])
    product_idx = rng.integers(0, len(codes), size=n_rows)
    # A negative binomial with n=2 is a count skewed like the notebook's: mean 73, long tail.
    orders = rng.negative_binomial(2, 2.0 / (2.0 + LOCAL.synthetic_mean_orders_placed), size=n_rows)
    orders = np.minimum(orders, LOCAL.synthetic_max_orders_placed)
    hours = slopes[product_idx] * orders + rng.normal(0.0, noise_sd, size=n_rows)
    frame = pd.DataFrame(
        {
            LABEL_COLUMN: np.round(np.clip(hours, 0.0, None), 4),
            ORDERS_COLUMN: orders.astype(np.int64),
            PRODUCT_COLUMN: codes[product_idx],
        }
    )
    return frame.loc[:, list(DATASET_COLUMNS)]


def generate_weeks(
    n_weeks: int,
    rows_per_week: int = LOCAL.synthetic_rows_per_week,
    seed: int = 42,
    first_drop: datetime = LOCAL.synthetic_first_drop,
) -> List[WeeklyDataset]:
    """Make several consecutive weeks of orders, each stamped with its Friday drop time.

    Week i uses seed `seed + i`, so adding weeks never changes the earlier ones.

    Raises:
        ValueError: if n_weeks < 1 or rows_per_week < 1.
    """
    if n_weeks < 1:
        raise ValueError(f"n_weeks must be at least 1, got {n_weeks}")
    return [
        WeeklyDataset(first_drop + timedelta(weeks=week), generate_orders(rows_per_week, seed + week))
        for week in range(n_weeks)
    ]
