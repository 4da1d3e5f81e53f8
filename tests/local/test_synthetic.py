"""The synthetic data generator follows the notebook's facts."""
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from pipeline.local.synthetic import PRODUCT_SLOPES, generate_orders, generate_weeks


def test_generate_orders_has_the_delivered_columns_and_row_count() -> None:
    frame = generate_orders(1234, seed=1)

    assert list(frame.columns) == ["hours_to_dispatch", "orders_placed", "product_code"]
    assert len(frame) == 1234


def test_generate_orders_is_reproducible_for_a_seed_and_varies_across_seeds() -> None:
    assert generate_orders(300, seed=7).equals(generate_orders(300, seed=7))
    assert not generate_orders(300, seed=7).equals(generate_orders(300, seed=8))


def test_generate_orders_follows_the_notebooks_facts() -> None:
    frame = generate_orders(20_000, seed=3)

    assert set(frame["product_code"]) == set(PRODUCT_SLOPES)
    assert frame["orders_placed"].min() == 0 and frame["orders_placed"].max() == 320
    assert 70 <= frame["orders_placed"].mean() <= 76
    assert frame["orders_placed"].skew() > 1
    assert (frame["hours_to_dispatch"] >= 0).all()
    for code, slope in PRODUCT_SLOPES.items():
        rows = frame[(frame["product_code"] == code) & (frame["orders_placed"] >= 20)]
        fit = LinearRegression().fit(rows[["orders_placed"]], rows["hours_to_dispatch"])
        residual_sd = float(np.std(rows["hours_to_dispatch"] - fit.predict(rows[["orders_placed"]])))
        assert fit.coef_[0] == pytest.approx(slope, abs=0.005)
        assert fit.intercept_ == pytest.approx(0, abs=0.15)
        assert residual_sd == pytest.approx(1.0, abs=0.05)


def test_generate_orders_rejects_no_rows() -> None:
    with pytest.raises(ValueError, match="n_rows must be at least 1"):
        generate_orders(0)


def test_generate_weeks_are_a_week_apart_on_friday_at_23_utc_and_stable() -> None:
    weeks = generate_weeks(3, rows_per_week=50, seed=10)

    assert [(w.timestamp.weekday(), w.timestamp.hour) for w in weeks] == [(4, 23)] * 3
    assert [(b.timestamp - a.timestamp).days for a, b in zip(weeks, weeks[1:])] == [7, 7]
    assert weeks[1].data.equals(generate_weeks(2, rows_per_week=50, seed=10)[1].data)
