"""A run's parameters, metrics and tags from the lineage and the report: every number found,
whatever the report gains later, and names and values MLflow accepts."""
from typing import Any, Dict

from pipeline.artefact.model import Model
from pipeline.settings import TRACKING
from pipeline.tracking.run_facts import gate_names, run_facts


def a_report() -> Dict[str, Any]:
    return {
        "metrics": {"r_squared": 0.97, "mean_absolute_error": 0.9, "n_train": 800, "n_test": 200},
        "hyperparameters": {"max_depth": 6},
        "r_squared_thresholds": {"error": 0.9, "warning": 0.95},
        "champion_tolerance": 0.2,
        "drift": {"statistics": [{"subject": "orders_placed", "statistic": "PSI", "value": 0.05,
                                  "threshold": 0.2, "drifted": False, "product": None}]},
        "decision": {"accepted": True, "failures": []},
    }


def test_every_number_of_the_report_is_a_metric_and_thresholds_are_parameters_too(trained_model: Model) -> None:
    facts = run_facts(trained_model.lineage(), a_report(), {"grid_size": 300}, {"logic_headroom.x": 1.5}, (), None)

    assert facts.metrics["metrics.r_squared"] == 0.97
    assert facts.metrics["drift.statistics.orders_placed.PSI.value"] == 0.05
    assert facts.metrics["drift.statistics.orders_placed.PSI.drifted"] == 0.0
    assert facts.metrics["decision.accepted"] == 1.0
    assert facts.metrics["logic_headroom.x"] == 1.5
    assert facts.metrics["monotonicity.largest_drop_hours"] == trained_model.monotonicity.largest_drop_hours
    assert facts.params["drift.statistics.orders_placed.PSI.threshold"] == "0.2"
    assert facts.params["r_squared_thresholds.warning"] == "0.95"
    assert facts.params["grid_size"] == "300"
    assert facts.params["hyperparameter.max_depth"] == str(trained_model.hyperparameters["max_depth"])
    assert "hyperparameters.max_depth" not in facts.metrics


def test_a_coverage_figure_added_to_the_report_later_is_logged_without_a_change(trained_model: Model) -> None:
    report = {**a_report(), "upper_bound": {"coverage_level": 0.9, "empirical_coverage": 0.912}}

    facts = run_facts(trained_model.lineage(), report, {}, {}, (), None)

    assert facts.metrics["upper_bound.empirical_coverage"] == 0.912
    assert facts.params["upper_bound.coverage_level"] == "0.9"


def test_a_refused_run_is_tagged_with_the_gates_that_refused_it(trained_model: Model) -> None:
    failures = ("logic checks: SKU001: estimate at 150 orders ...", "champion: new model's MAE 1.3 ...")

    facts = run_facts(trained_model.lineage(), a_report(), {}, {}, failures, None)

    assert facts.tags["refused_by"] == "logic_checks, champion"
    assert facts.tags["gate.champion"] == failures[1]
    assert facts.tags["decision"] == "refused"
    assert "artefact_uri" not in facts.tags
    assert gate_names(["r² error threshold: test r² 0.5 is below 0.9"]) == ("r2_error_threshold",)


def test_names_and_values_are_cut_to_what_mlflow_accepts(trained_model: Model) -> None:
    report = {**a_report(), "notes": {"a<b>" + "x" * 400: 1.0}}
    lineage = {**trained_model.lineage(), "git_commit": "g" * 10_000}

    facts = run_facts(lineage, report, {}, {}, (), "s3://bucket/models/m.pkl")

    assert all(len(key) <= TRACKING.max_key_chars and "<" not in key for key in facts.metrics)
    assert len(facts.tags["git_commit"]) == TRACKING.max_value_chars
    assert facts.tags["artefact_uri"] == "s3://bucket/models/m.pkl"
