"""Parsing, validating and scoring CSV rows in chunks; rejects; the backtest's metrics."""
import io
from typing import Any, List

import numpy as np
import pytest
from sklearn.metrics import mean_absolute_error, r2_score

from pipeline.artefact.model import Model
from pipeline.batch import scoring
from tests.helpers import csv_text

HEADER = ["order_id", "orders_placed", "product_code", "note"]


def run(text: str, model: Model, chunk_rows: int = 1000) -> List[Any]:
    """Everything `score_chunks` yields: the header, then the chunks."""
    return list(scoring.score_chunks(io.StringIO(text, newline=""), model, chunk_rows))


def reasons(text: str, model: Model) -> List[Any]:
    return [(r.line, r.reason) for chunk in run(text, model)[1:] for r in chunk.rejects]


def test_scored_rows_keep_every_column_and_the_estimate_is_appended(trained_model: Model) -> None:
    text = csv_text([HEADER, ["A1", "112", "SKU001", "x, with comma"], ["A2", "3.5", "SKU005", ""]])
    chunk = run(text, trained_model)[1]

    output = scoring.output_bytes(chunk).decode()

    expected = trained_model.predict(["SKU001", "SKU005"], [112.0, 3.5]).tolist()
    assert trained_model.upper_bound is not None
    upper = [e + trained_model.upper_bound.margin_hours for e in expected]
    assert output == (f'A1,112,SKU001,"x, with comma",{expected[0]!r},{upper[0]!r},false\n'
                      f'A2,3.5,SKU005,,{expected[1]!r},{upper[1]!r},false\n')


def test_estimates_are_the_models_predictions_to_the_last_bit(trained_model: Model) -> None:
    rows = [[str(i), str(o), code, ""] for i, (o, code) in
            enumerate((o, code) for o in (0, 1.5, 73, 150, 320, 1e6) for code in trained_model.product_codes)]
    chunk = run(csv_text([HEADER] + rows), trained_model)[1]

    singles = [trained_model.predict_one(r[2], float(r[1])) for r in rows]
    assert chunk.estimates.tolist() == singles


@pytest.mark.parametrize("orders, reason", [
    ("", "orders_placed is missing"),
    ("  ", "orders_placed is missing"),
    ("-3", "orders_placed is negative: '-3'"),
    ("twelve", "orders_placed is not a number: 'twelve'"),
    ("nan", "orders_placed is not finite: 'nan'"),
    ("inf", "orders_placed is not finite: 'inf'"),
    ("2e9", "orders_placed is above 1e+09: '2e9'"),
])
def test_a_bad_orders_placed_is_rejected_with_its_reason(trained_model: Model, orders: str, reason: str) -> None:
    text = csv_text([HEADER, ["A1", orders, "SKU001", ""]])

    assert reasons(text, trained_model) == [(2, reason)]


def test_an_unknown_product_code_is_rejected(trained_model: Model) -> None:
    text = csv_text([HEADER, ["A1", "10", "SKU999", ""]])

    assert reasons(text, trained_model) == [(2, "unknown product code: 'SKU999'")]


def test_a_missing_product_code_is_rejected(trained_model: Model) -> None:
    text = csv_text([HEADER, ["A1", "10", "", ""]])

    assert reasons(text, trained_model) == [(2, "product_code is missing")]


def test_a_row_with_the_wrong_number_of_fields_is_rejected(trained_model: Model) -> None:
    text = "order_id,orders_placed,product_code,note\nA1,10,SKU001\nA2,10,SKU001,,extra\n"

    assert reasons(text, trained_model) == [
        (2, "wrong number of fields: expected 4, got 3"), (3, "wrong number of fields: expected 4, got 5")]


def test_every_problem_of_a_row_is_in_its_reason(trained_model: Model) -> None:
    text = csv_text([HEADER, ["A1", "-1", "SKU999", ""]])

    assert reasons(text, trained_model) == [(2, "orders_placed is negative: '-1'; unknown product code: 'SKU999'")]


def test_line_numbers_count_the_header_and_blank_lines(trained_model: Model) -> None:
    text = "order_id,orders_placed,product_code,note\nA1,1,SKU001,\n\nA2,x,SKU001,\n"

    assert reasons(text, trained_model) == [(4, "orders_placed is not a number: 'x'")]


def test_rejects_keep_the_original_row_as_csv_text(trained_model: Model) -> None:
    chunk = run(csv_text([HEADER, ["A1", "-1", "SKU001", "a, b"]]), trained_model)[1]

    assert scoring.rejects_bytes(chunk).decode() == "2,orders_placed is negative: '-1',\"A1,-1,SKU001,\"\"a, b\"\"\"\n"


def test_chunks_hold_at_most_chunk_rows_rows(trained_model: Model) -> None:
    rows = [[str(i), "10", "SKU001", ""] for i in range(25)]

    chunks = run(csv_text([HEADER] + rows), trained_model, chunk_rows=10)[1:]

    assert [len(c.rows) for c in chunks] == [10, 10, 5]


@pytest.mark.parametrize("text, message", [
    ("", "the input is empty"),
    ("order_id,product_code\nA1,SKU001\n", "no column orders_placed"),
    ("orders_placed,product_code,product_code\n", "repeats the column\\(s\\) product_code"),
    ("orders_placed,product_code,est_hours_to_dispatch\n", "already has a column est_hours_to_dispatch"),
])
def test_an_unusable_header_is_a_scoring_error(trained_model: Model, text: str, message: str) -> None:
    with pytest.raises(scoring.ScoringError, match=message):
        run(text, trained_model)


def test_a_reject_fraction_above_the_limit_is_an_error_with_counts_by_reason(trained_model: Model) -> None:
    summary = scoring.ScoringSummary()
    for chunk in run(csv_text([HEADER, ["A", "-1", "SKU001", ""], ["B", "1", "SKU001", ""],
                               ["C", "1", "SKU9", ""]]), trained_model)[1:]:
        summary.add(chunk)

    with pytest.raises(scoring.RejectFractionError,
                       match=r"2 of 3 rows \(66.67%\).*above the allowed 50.00%: 1 orders_placed is negative, "
                             r"1 unknown product code \(first at line\(s\) 2, 4\)"):
        scoring.check_reject_fraction(summary, 0.5)


def test_a_reject_fraction_at_the_limit_passes(trained_model: Model) -> None:
    summary = scoring.ScoringSummary()
    for chunk in run(csv_text([HEADER, ["A", "-1", "SKU001", ""], ["B", "1", "SKU001", ""]]), trained_model)[1:]:
        summary.add(chunk)

    scoring.check_reject_fraction(summary, 0.5)

    assert (summary.rows, summary.rejected) == (2, 1)


def test_backtest_metrics_match_scikit_learns_over_chunks(trained_model: Model, test_week: Any) -> None:
    text = test_week.to_csv(index=False)
    accumulator = scoring.BacktestAccumulator()
    header, *chunks = run(text, trained_model, chunk_rows=128)
    for chunk in chunks:
        accumulator.add(header, chunk)

    metrics = accumulator.metrics()

    estimates = trained_model.predict(list(test_week.product_code), list(test_week.orders_placed))
    assert metrics["rows"] == len(test_week)
    assert metrics["mae"] == pytest.approx(mean_absolute_error(test_week.hours_to_dispatch, estimates), rel=1e-12)
    assert metrics["r2"] == pytest.approx(r2_score(test_week.hours_to_dispatch, estimates), rel=1e-9)
    sku1 = (test_week.product_code == "SKU001").to_numpy()
    assert metrics["mean_error_by_product"]["SKU001"] == pytest.approx(
        float(np.mean(estimates[sku1] - test_week.hours_to_dispatch.to_numpy()[sku1])), rel=1e-9)


def test_backtest_rows_without_a_numeric_label_are_counted_not_measured(trained_model: Model) -> None:
    text = csv_text([["hours_to_dispatch", "orders_placed", "product_code"], ["", "10", "SKU001"],
                     ["2.5", "10", "SKU001"]])
    accumulator = scoring.BacktestAccumulator()
    header, chunk = run(text, trained_model)
    accumulator.add(header, chunk)

    metrics = accumulator.metrics()

    estimate = trained_model.predict_one("SKU001", 10)
    assert (metrics["rows"], metrics["unlabelled_rows"]) == (1, 1)
    assert metrics["mae"] == pytest.approx(abs(estimate - 2.5))
    assert metrics["r2"] is None  # one label does not vary


def test_backtest_of_an_input_without_the_label_is_a_scoring_error(trained_model: Model) -> None:
    header, chunk = run(csv_text([HEADER, ["A", "1", "SKU001", ""]]), trained_model)

    with pytest.raises(scoring.ScoringError, match="no column hours_to_dispatch"):
        scoring.BacktestAccumulator().add(header, chunk)


def test_a_quoted_line_break_keeps_the_line_numbers_of_later_rows(trained_model: Model) -> None:
    text = 'order_id,orders_placed,product_code,note\nA1,1,SKU001,"two\nlines"\nA2,-1,SKU001,\n'

    header, chunk = run(text, trained_model)

    assert [r[3] for r in chunk.rows] == ["two\nlines"]
    assert [(r.line, r.reason) for r in chunk.rejects] == [(4, "orders_placed is negative: '-1'")]


def test_rejects_across_chunks_keep_their_file_line_numbers(trained_model: Model) -> None:
    rows = [[str(i), "10" if i % 7 else "-1", "SKU001", ""] for i in range(30)]

    lines = [r.line for chunk in run(csv_text([HEADER] + rows), trained_model, chunk_rows=8)[1:] for r in chunk.rejects]

    assert lines == [i + 2 for i in range(30) if i % 7 == 0]


def test_plain_rows_are_written_as_their_original_text_plus_the_estimate(trained_model: Model) -> None:
    text = "order_id,orders_placed,product_code,note\r\nA1,0112,SKU001,n\r\nA2,-1,SKU001,n\r\nA3,7.50,SKU002,\r\n"

    chunk = run(text, trained_model)[1]

    first, third = trained_model.predict(["SKU001", "SKU002"], [112.0, 7.5]).tolist()
    assert trained_model.upper_bound is not None
    margin = trained_model.upper_bound.margin_hours
    assert scoring.output_bytes(chunk).decode() == (f"A1,0112,SKU001,n,{first!r},{first + margin!r},false\n"
                                                    f"A3,7.50,SKU002,,{third!r},{third + margin!r},false\n")
