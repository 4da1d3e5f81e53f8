"""The drift statistics: each kind of drift is found and named, a healthy week raises none."""
import logging

import numpy as np
import pandas as pd
import pytest

from pipeline.artefact.model import Model
from pipeline.local.synthetic import PRODUCT_SLOPES, generate_orders
from pipeline.settings import DRIFT
from pipeline.train import drift

REFERENCE_SEED, HEALTHY_SEED = 4, 77


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    """The live model's training week: the test week (the session's model is trained on it)."""
    return generate_orders(1000, seed=REFERENCE_SEED)


def warnings_of(report: drift.DriftReport) -> list:
    return [finding.warning() for finding in report.findings]


def test_psi_of_a_sample_against_itself_is_zero() -> None:
    sample = generate_orders(1000, seed=1)["orders_placed"].to_numpy()

    assert drift.population_stability_index(sample, sample) == 0.0


def test_psi_grows_with_the_shift() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, 5000)

    small = drift.population_stability_index(reference, rng.normal(0.1, 1, 5000))
    large = drift.population_stability_index(reference, rng.normal(1.0, 1, 5000))

    assert small < 0.05 < DRIFT.orders_psi_threshold < large


def test_categorical_psi_counts_a_vanished_code_as_a_large_change() -> None:
    assert drift.categorical_psi(["A", "B"] * 50, ["A"] * 100) > 1.0


def test_a_healthy_week_of_the_same_process_has_no_finding(reference: pd.DataFrame, trained_model: Model) -> None:
    week = generate_orders(1000, seed=HEALTHY_SEED)

    report = drift.compute_drift(week, reference, "s3://b/reference.csv", trained_model)

    assert len(report.statistics) == 2 + 10 + 3 + 6
    assert warnings_of(report) == []


def test_orders_from_busier_days_are_orders_placed_drift(reference: pd.DataFrame) -> None:
    week = generate_orders(1000, seed=HEALTHY_SEED)
    week["orders_placed"] = week["orders_placed"] * 2

    findings = drift.orders_drift(reference, week)

    fired = [(s.product, s.statistic) for s in findings if s.drifted]
    assert (None, "PSI") in fired and (None, "KS p-value") in fired
    assert drift.DriftReport(None, tuple(findings)).findings[0].warning().startswith("orders_placed drift: PSI ")


def test_a_product_whose_orders_shift_is_named(reference: pd.DataFrame) -> None:
    week = generate_orders(1000, seed=HEALTHY_SEED)
    sku003 = week["product_code"] == "SKU003"
    week.loc[sku003, "orders_placed"] = week.loc[sku003, "orders_placed"] * 3

    report = drift.DriftReport(None, tuple(drift.orders_drift(reference, week)))

    assert {s.product for s in report.findings} >= {"SKU003"}
    assert {s.product for s in report.findings} <= {None, "SKU003"}
    assert any(w.startswith("orders_placed drift for SKU003: ") for w in warnings_of(report))


def test_a_changed_product_mix_is_product_mix_drift(reference: pd.DataFrame) -> None:
    pool = generate_orders(4000, seed=HEALTHY_SEED)
    week = pd.concat([pool[pool["product_code"] == "SKU001"].head(500),
                      pool[pool["product_code"] != "SKU001"].head(500)])

    [psi, new, vanished] = drift.product_mix_drift(reference, week)

    assert (psi.drifted, new.drifted, vanished.drifted) == (True, False, False)
    assert psi.warning().startswith("product mix drift: PSI of the product codes' shares ")
    assert "SKU001 50%" in psi.warning()


def test_new_and_vanished_codes_are_product_mix_drift(reference: pd.DataFrame) -> None:
    slopes = {**{code: slope for code, slope in PRODUCT_SLOPES.items() if code != "SKU002"}, "SKU006": 0.2}
    week = generate_orders(1000, seed=HEALTHY_SEED, product_slopes=slopes)

    [_, new, vanished] = drift.product_mix_drift(reference, week)

    assert new.warning() == "product mix drift: 1 product code(s) the reference week did not have: SKU006"
    assert vanished.warning() == "product mix drift: 1 product code(s) of the reference week missing this week: SKU002"


def test_a_product_whose_slope_doubles_is_performance_drift_named_by_its_code(
    reference: pd.DataFrame, trained_model: Model
) -> None:
    week = generate_orders(1000, seed=HEALTHY_SEED,
                           product_slopes={**PRODUCT_SLOPES, "SKU003": 2 * PRODUCT_SLOPES["SKU003"]})

    report = drift.compute_drift(week, reference, "s3://b/reference.csv", trained_model)

    per_product = [s.product for s in report.findings if s.kind == drift.PERFORMANCE and s.product]
    assert per_product == ["SKU003"]
    assert any(w.startswith(f"performance drift for SKU003: the live model {trained_model.artefact_id}'s MAE")
               for w in warnings_of(report))


def test_every_product_slower_is_performance_drift_of_the_live_model(trained_model: Model) -> None:
    week = generate_orders(1000, seed=HEALTHY_SEED, product_slopes={c: 1.3 * s for c, s in PRODUCT_SLOPES.items()})

    [overall, *_] = drift.performance_drift(trained_model, week)

    assert overall.drifted
    assert overall.value > DRIFT.performance_mae_ratio_threshold
    assert overall.warning().startswith("performance drift: the live model ")


def test_without_reference_or_live_model_nothing_is_computed_and_it_is_said() -> None:
    report = drift.compute_drift(generate_orders(200, seed=1), None, None, None)

    assert report.statistics == ()
    assert report.notes == ("no reference week: orders_placed and product-mix drift not computed",
                            "no live model: performance drift not computed")


def test_log_findings_logs_one_warning_per_finding_with_the_word_drift(
    reference: pd.DataFrame, trained_model: Model, caplog: pytest.LogCaptureFixture
) -> None:
    week = generate_orders(1000, seed=HEALTHY_SEED, product_slopes={c: 1.3 * s for c, s in PRODUCT_SLOPES.items()})
    report = drift.compute_drift(week, reference, "s3://b/reference.csv", trained_model)

    with caplog.at_level(logging.INFO):
        drift.log_findings(report)

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(report.findings) > 0
    assert all(" drift" in w for w in warnings)


def test_product_mix_drift_names_a_few_codes_cut_short_and_counts_the_rest() -> None:
    # A reference week from before the product-code rule may hold thousands of codes, or a long one.
    reference = generate_orders(3000, seed=REFERENCE_SEED)
    reference["product_code"] = ["X" * 130_000] + [f"P{i:04d}" for i in range(1, len(reference))]
    week = generate_orders(1000, seed=HEALTHY_SEED)

    findings = drift.product_mix_drift(reference, week)

    assert all(len(finding.warning()) < 1_000 for finding in findings)
    vanished = findings[2].warning()
    assert vanished.startswith("product mix drift: 3000 product code(s) of the reference week missing this week: "
                               "P0001, P0002, P0003, P0004, P0005 and 2995 more")
    assert "'" + "X" * 100 + "'... (130000 characters)" in drift._codes(["X" * 130_000])
