"""Champion/challenger and the gates: the comparison on the same rows, every failed gate in one
error, and the real train stage refusing a model worse than the live one (over S3, CLI included)."""
import json
import logging
from typing import Any, Dict, List

import numpy as np
import pytest

from pipeline.artefact.model import Model
from pipeline.local.synthetic import generate_orders
from pipeline.model_registry.live_model import get_live_model
from pipeline.settings import LAYOUT, TRAIN
from pipeline.storage.datasets import put_dataset
from pipeline.train import champion, stage
from tests.helpers import error_lines, latest_drop, run_cli

# A week of 100 orders: its model learns from 80 rows and is far worse than the live model,
# trained on 800 rows of the same process, on the same 20 held-out rows.
SMALL_WEEK_ROWS, SMALL_WEEK_SEED = 100, 5
NEWEST = latest_drop()


def keys(client: Any, bucket: str, prefix: str) -> List[str]:
    return sorted(item["Key"] for item in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def test_comparison_scores_both_models_on_the_same_rows(trained_model: Model) -> None:
    week = generate_orders(200, seed=9)
    orders, codes = week["orders_placed"].to_numpy(float), list(week["product_code"])
    labels = week["hours_to_dispatch"].to_numpy()

    comparison = champion.compare_with_champion(trained_model, trained_model, orders, codes, labels, 0.1)

    assert comparison is not None
    expected = float(np.mean(np.abs(trained_model.predict(codes, orders) - labels)))
    assert comparison.champion_mae == comparison.challenger_mae == pytest.approx(expected)
    assert (comparison.rows_compared, comparison.rows_left_out, comparison.refused) == (200, 0, False)


def test_comparison_leaves_out_products_the_live_model_does_not_know_and_says_so(
    trained_model: Model, caplog: pytest.LogCaptureFixture
) -> None:
    orders = np.array([100.0, 120.0, 80.0])
    codes = ["SKU001", "SKU006", "SKU006"]

    with caplog.at_level(logging.INFO):
        comparison = champion.compare_with_champion(
            trained_model, trained_model, orders, codes, np.array([7.5, 24.0, 16.0]), 0.1)

    assert comparison is not None
    assert (comparison.rows_compared, comparison.rows_left_out, comparison.codes_left_out) == (1, 2, ("SKU006",))
    assert "leaves out 2 held-out row(s) of product(s) SKU006, unknown to live model" in caplog.text


@pytest.mark.parametrize("challenger_mae, refused", [(1.0999, False), (1.1001, True), (1.25, True)])
def test_the_champion_gate_refuses_beyond_the_tolerance(challenger_mae: float, refused: bool) -> None:
    comparison = champion.ChampionComparison("abcd1234", None, 1.0, challenger_mae, 200, 0, (), 0.10)

    assert comparison.refused is refused


def test_decide_lists_every_failed_gate() -> None:
    comparison = champion.ChampionComparison("abcd1234", None, 1.0, 1.5, 200, 0, (), 0.10)

    decision = champion.decide(["SKU001: not rising"], "test r² 0.8 is below the error threshold 0.9", comparison)

    assert decision.accepted is False
    assert [f.split(":")[0] for f in decision.failures] == ["logic checks", "r² error threshold", "champion"]


def test_the_default_tolerance_refuses_a_challenger_25_percent_worse() -> None:
    worse = champion.ChampionComparison("abcd1234", None, 1.0, 1.25, 200, 0, (), TRAIN.default_champion_tolerance)

    assert worse.refused


@pytest.mark.parametrize("tolerance", [-0.1, float("nan"), float("inf")])
def test_a_bad_tolerance_is_refused(tolerance: float) -> None:
    with pytest.raises(ValueError, match="--champion-tolerance must be a finite number >= 0"):
        champion.check_tolerance_valid(tolerance)


def test_the_first_model_goes_live_on_the_other_gates_alone(
    s3: Any, bucket_with_datasets: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        model = stage.train(bucket_with_datasets, 0.9, 0.95)

    assert keys(s3, bucket_with_datasets, LAYOUT.models_prefix) == [model.artefact_key]
    assert "no live model to compare with" in caplog.text


def test_main_refuses_a_model_worse_than_the_live_one_and_still_writes_the_report(
    s3: Any, bucket_with_model: str
) -> None:
    live = get_live_model(bucket_with_model)
    put_dataset(bucket_with_model, generate_orders(SMALL_WEEK_ROWS, seed=SMALL_WEEK_SEED), NEWEST)

    with pytest.raises(champion.ModelRefusedError, match=f"champion: new model's MAE .* against live model "
                                                         f"{live.artefact_id}'s MAE"):
        stage.train(bucket_with_model, 0.5, 0.6)

    assert keys(s3, bucket_with_model, LAYOUT.models_prefix) == [live.artefact_key]
    assert get_live_model(bucket_with_model).artefact_id == live.artefact_id
    [report_json] = [k for k in keys(s3, bucket_with_model, LAYOUT.reports_prefix) if k.endswith("report.json")]
    report = json.loads(s3.get_object(Bucket=bucket_with_model, Key=report_json)["Body"].read())
    assert report["decision"]["accepted"] is False
    assert report["champion"]["artefact_id"] == live.artefact_id
    assert report["champion"]["comparison"]["refused"] is True


@pytest.mark.e2e
def test_cli_refusing_a_worse_model_exits_1_with_one_error_naming_the_live_model_and_both_maes(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str
) -> None:
    live = get_live_model(bucket_with_model)
    put_dataset(bucket_with_model, generate_orders(SMALL_WEEK_ROWS, seed=SMALL_WEEK_SEED), NEWEST)

    result = run_cli(["-m", "pipeline.train_model", bucket_with_model, "0.5", "0.6"], s3_env)

    assert result.returncode == 1
    [line] = error_lines(result.stdout)
    [report_json] = [k for k in keys(s3, bucket_with_model, LAYOUT.reports_prefix) if k.endswith("report.json")]
    comparison = json.loads(s3.get_object(Bucket=bucket_with_model, Key=report_json)["Body"].read())[
        "champion"]["comparison"]
    assert (f"new model's MAE {comparison['challenger_mae']:.4f} hours against live model {live.artefact_id}'s "
            f"MAE {comparison['champion_mae']:.4f} hours") in line
    assert "no model persisted" in line and report_json.rsplit("/", 1)[0] in line
    assert keys(s3, bucket_with_model, LAYOUT.models_prefix) == [live.artefact_key]


@pytest.mark.e2e
def test_cli_with_a_generous_tolerance_persists_the_same_model(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str
) -> None:
    put_dataset(bucket_with_model, generate_orders(SMALL_WEEK_ROWS, seed=SMALL_WEEK_SEED), NEWEST)

    result = run_cli(["-m", "pipeline.train_model", bucket_with_model, "0.5", "0.6",
                      "--champion-tolerance", "5"], s3_env)

    assert result.returncode == 0, result.stdout
    assert len(keys(s3, bucket_with_model, LAYOUT.models_prefix)) == 2
