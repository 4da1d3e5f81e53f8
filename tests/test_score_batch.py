"""The batch-scoring CLI, run as a subprocess against the local S3 server over HTTP; and the same
command line in-process (`score_batch.CLI.main`, which returns the exit code)."""
import csv
import io
import json
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict, List, Optional

import pytest
from fastapi.testclient import TestClient

from pipeline import score_batch
from pipeline.artefact.model import Model
from pipeline.local.synthetic import generate_weeks
from pipeline.model_registry.live_model import list_models
from pipeline.model_registry.records import REJECT, StatusChange, put_status_change
from pipeline.serve.api import create_app
from pipeline.settings import API, LAYOUT, LOCAL, MESSAGES
from pipeline.storage.datasets import list_datasets, put_dataset
from pipeline.storage.layout import predictions_key
from tests.helpers import (
    csv_text,
    error_lines,
    made_before_the_served_parts,
    models_created,
    persist_model_copy,
    run_cli,
)

pytestmark = pytest.mark.e2e

COLUMNS = ["order_id", "product_code", "region", "orders_placed"]
ROWS = [["A-1", "SKU001", "north", "112"], ["A-2", "SKU003", "south, east", "0"], ["A-3", "SKU005", "", "73.5"]]


def score(bucket: str, env: Dict[str, str], *args: str) -> Any:
    return run_cli(["-m", "pipeline.score_batch", bucket, *args], env)


def put_csv(s3: Any, bucket: str, key: str, rows: List[List[str]]) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=csv_text(rows).encode())


def read_csv(s3: Any, bucket: str, key: str) -> List[List[str]]:
    return list(csv.reader(io.StringIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode())))


def keys(s3: Any, bucket: str, prefix: str = "") -> List[str]:
    return [item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def model_id_of_output(s3: Any, bucket: str, key: str) -> str:
    return str(s3.head_object(Bucket=bucket, Key=key)["Metadata"][LAYOUT.model_id_metadata_key])


def october(day: int) -> datetime:
    return datetime(2026, 10, day, 12, tzinfo=timezone.utc)


# --- scoring a file ----------------------------------------------------------------------

def test_output_keeps_every_column_in_order_and_adds_the_estimate(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str, trained_model: Model
) -> None:
    put_csv(s3, bucket_with_model, "in/orders.csv", [COLUMNS] + ROWS)

    result = score(bucket_with_model, s3_env, "in/orders.csv", "out/orders.csv")

    assert result.returncode == 0, result.stdout + result.stderr
    output = read_csv(s3, bucket_with_model, "out/orders.csv")
    assert output[0] == COLUMNS + ["est_hours_to_dispatch", "upper_hours_to_dispatch", "extrapolated"]
    assert [row[:4] for row in output[1:]] == ROWS
    assert [float(row[4]) for row in output[1:]] == [
        trained_model.predict_one(code, float(orders)) for _, code, _, orders in ROWS]


@pytest.mark.parametrize("made", ["today", "before the served parts"])
def test_single_batch_and_batch_scoring_agree_on_every_field(
    s3: Any, s3_env: Dict[str, str], bucket_with_datasets: str, trained_model: Model, made: str
) -> None:
    model = trained_model if made == "today" else made_before_the_served_parts(trained_model)
    served = persist_model_copy(bucket_with_datasets, model, datetime.now(timezone.utc), "a9e1d2c3")
    highest = max(served.trained_range(code).highest for code in served.product_codes)
    requests = [{"product_code": code, "orders_placed": orders} for code in served.product_codes
                for orders in (0.0, 0.5, 37.0, 99.75, 150.0, highest, highest + 0.5, highest + 300.0, 1e6)]
    rows = [[f"R{i}", r["product_code"], "", repr(r["orders_placed"])] for i, r in enumerate(requests)]
    put_csv(s3, bucket_with_datasets, "in/agree.csv", [COLUMNS] + rows)

    result = score(bucket_with_datasets, s3_env, "in/agree.csv", "out/agree.csv")

    assert result.returncode == 0, result.stdout + result.stderr
    client = TestClient(create_app(served))
    single = [client.post(API.predict_path, json=r).json() for r in requests]
    batch = client.post(API.predict_batch_path, json=requests).json()
    metadata = s3.head_object(Bucket=bucket_with_datasets, Key="out/agree.csv")["Metadata"]
    scored = [{"est_hours_to_dispatch": float(row[4]), "model_version": metadata[LAYOUT.model_version_metadata_key],
               "upper_hours_to_dispatch": float(row[5]) if row[5] else None, "extrapolated": json.loads(row[6])}
              for row in read_csv(s3, bucket_with_datasets, "out/agree.csv")[1:]]
    assert single == batch == scored
    assert {p["extrapolated"] for p in single} == {False, True}
    assert (None in {p["upper_hours_to_dispatch"] for p in single}) is (made != "today")


def test_output_metadata_and_log_name_the_model(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str, trained_model: Model
) -> None:
    put_csv(s3, bucket_with_model, "in/orders.csv", [COLUMNS] + ROWS)

    result = score(bucket_with_model, s3_env, "in/orders.csv", "out/orders.csv")

    metadata = s3.head_object(Bucket=bucket_with_model, Key="out/orders.csv")["Metadata"]
    assert metadata[LAYOUT.model_id_metadata_key] == trained_model.artefact_id
    assert metadata[LAYOUT.model_version_metadata_key] == str(trained_model)
    assert "3 of 3 rows, 0 rejected (no rejects)" in result.stdout
    assert f"model {trained_model.artefact_id}" in result.stdout


def test_estimates_are_those_the_service_gives_for_the_same_rows(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str, trained_model: Model, test_week: Any
) -> None:
    rows = test_week[["orders_placed", "product_code"]].head(500).astype(str).values.tolist()
    rows += [["0.5", "SKU002"], ["319.999", "SKU004"], ["1e6", "SKU001"]]
    put_csv(s3, bucket_with_model, "in/week.csv", [["orders_placed", "product_code"]] + rows)

    assert score(bucket_with_model, s3_env, "in/week.csv", "out/week.csv").returncode == 0

    scored = [float(row[2]) for row in read_csv(s3, bucket_with_model, "out/week.csv")[1:]]
    client = TestClient(create_app(trained_model))
    requests = [{"product_code": code, "orders_placed": float(orders)} for orders, code in rows]
    batch = client.post(API.predict_batch_path, json=requests).json()
    singles = [client.post(API.predict_path, json=request).json() for request in requests[:50]]
    assert scored == [answer["est_hours_to_dispatch"] for answer in batch]
    assert scored[:50] == [answer["est_hours_to_dispatch"] for answer in singles]


def test_unscorable_rows_go_to_the_rejects_object_with_line_and_reason(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str
) -> None:
    bad = [["B-1", "SKU001", "n", "-4"], ["B-2", "SKU001", "n", "many"], ["B-3", "SKU042", "n", "5"],
           ["B-4", "", "n", "5"], ["B-5", "SKU001", "n", ""], ["B-6", "SKU001", "n", "inf"], ["B-7", "SKU001"]]
    put_csv(s3, bucket_with_model, "in/orders.csv", [COLUMNS] + ROWS + bad)

    result = score(bucket_with_model, s3_env, "in/orders.csv", "out/orders.csv", "--max-reject-fraction", "0.8")

    assert result.returncode == 0, result.stdout
    assert read_csv(s3, bucket_with_model, "out/orders.csv" + LAYOUT.rejects_suffix) == [
        ["line", "reason", "row"],
        ["5", "orders_placed is negative: '-4'", "B-1,SKU001,n,-4"],
        ["6", "orders_placed is not a number: 'many'", "B-2,SKU001,n,many"],
        ["7", "unknown product code: 'SKU042'", "B-3,SKU042,n,5"],
        ["8", "product_code is missing", "B-4,,n,5"],
        ["9", "orders_placed is missing", "B-5,SKU001,n,"],
        ["10", "orders_placed is not finite: 'inf'", "B-6,SKU001,n,inf"],
        ["11", "wrong number of fields: expected 4, got 2", "B-7,SKU001"],
    ]
    assert [row[0] for row in read_csv(s3, bucket_with_model, "out/orders.csv")[1:]] == ["A-1", "A-2", "A-3"]
    assert "3 of 10 rows, 7 rejected" in result.stdout


def test_too_many_rejects_exit_1_with_one_error_line_and_write_nothing(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str
) -> None:
    good = [[f"G-{i}", "SKU001", "n", "10"] for i in range(98)]
    rows = good + [["B-1", "SKU001", "n", "-1"], ["B-2", "SKU9", "n", "1"]]
    put_csv(s3, bucket_with_model, "in/orders.csv", [COLUMNS] + rows)

    result = score(bucket_with_model, s3_env, "in/orders.csv", "out/orders.csv")

    assert result.returncode == 1
    (error,) = error_lines(result.stdout)
    assert "2 of 100 rows (2.00%) could not be scored, above the allowed 1.00%" in error
    assert keys(s3, bucket_with_model, "out/") == []
    assert s3.list_multipart_uploads(Bucket=bucket_with_model).get("Uploads", []) == []


def test_rejects_that_would_overwrite_the_input_exit_1_with_one_error_line_and_write_nothing(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str
) -> None:
    # The rejects go to OUTPUT_KEY + .rejects.csv: here that is the input itself.
    put_csv(s3, bucket_with_model, "in/x.csv.rejects.csv", [COLUMNS] + ROWS + [["B-1", "SKU9", "n", "1"]])
    before = s3.get_object(Bucket=bucket_with_model, Key="in/x.csv.rejects.csv")["Body"].read()

    result = score(bucket_with_model, s3_env, "in/x.csv.rejects.csv", "in/x.csv", "--max-reject-fraction", "1")

    assert result.returncode == 1
    (error,) = error_lines(result.stdout)
    assert "Invalid arguments passed to score_batch.py" in error
    assert "the rejects would go to OUTPUT_KEY + .rejects.csv, which is INPUT_KEY ('in/x.csv.rejects.csv')" in error
    assert s3.get_object(Bucket=bucket_with_model, Key="in/x.csv.rejects.csv")["Body"].read() == before
    assert keys(s3, bucket_with_model, "in/") == ["in/x.csv.rejects.csv"]
    assert s3.list_multipart_uploads(Bucket=bucket_with_model).get("Uploads", []) == []


def test_a_named_model_is_used_instead_of_the_live_one(
    s3: Any, s3_env: Dict[str, str], bucket: str, trained_model: Model
) -> None:
    persist_model_copy(bucket, trained_model, october(1), "0ld00001")
    persist_model_copy(bucket, trained_model, october(8), "11fe0002")
    put_csv(s3, bucket, "in/orders.csv", [COLUMNS] + ROWS)

    assert score(bucket, s3_env, "in/orders.csv", "out/live.csv").returncode == 0
    assert score(bucket, s3_env, "in/orders.csv", "out/named.csv", "--model", "0ld00001").returncode == 0

    assert model_id_of_output(s3, bucket, "out/live.csv") == "11fe0002"
    assert model_id_of_output(s3, bucket, "out/named.csv") == "0ld00001"


def test_a_rejected_model_is_not_used(s3: Any, s3_env: Dict[str, str], bucket: str, trained_model: Model) -> None:
    persist_model_copy(bucket, trained_model, october(1), "600d0001")
    newest = persist_model_copy(bucket, trained_model, october(8), "bad00002")
    put_status_change(bucket, StatusChange(
        newest.artefact_key, REJECT, "late orders", "tester", october(9)))
    put_csv(s3, bucket, "in/orders.csv", [COLUMNS] + ROWS)

    assert score(bucket, s3_env, "in/orders.csv", "out/orders.csv").returncode == 0

    assert model_id_of_output(s3, bucket, "out/orders.csv") == "600d0001"


def test_an_unknown_model_exits_1_naming_it(s3: Any, s3_env: Dict[str, str], bucket_with_model: str) -> None:
    put_csv(s3, bucket_with_model, "in/orders.csv", [COLUMNS] + ROWS)

    result = score(bucket_with_model, s3_env, "in/orders.csv", "out/orders.csv", "--model", "feedbeef")

    assert result.returncode == 1
    (error,) = error_lines(result.stdout)
    assert "MODEL 'feedbeef' is not an artefact id or key" in error
    assert keys(s3, bucket_with_model, "out/") == []


def test_a_missing_input_exits_1_naming_it(s3: Any, s3_env: Dict[str, str], bucket_with_model: str) -> None:
    result = score(bucket_with_model, s3_env, "in/none.csv", "out/orders.csv")

    assert result.returncode == 1
    (error,) = error_lines(result.stdout)
    assert f"s3://{bucket_with_model}/in/none.csv: no such object" in error


def test_a_missing_bucket_exits_1_naming_it(s3_env: Dict[str, str]) -> None:
    result = score("no-such-bucket-here", s3_env, "in/orders.csv", "out/orders.csv")

    assert result.returncode == 1
    (error,) = error_lines(result.stdout)
    assert "s3://no-such-bucket-here: bucket does not exist" in error


@pytest.mark.parametrize("args, reason", [
    ([], "INPUT_KEY and OUTPUT_KEY are both needed"),
    (["in.csv"], "INPUT_KEY and OUTPUT_KEY are both needed"),
    (["in.csv", "in.csv"], "OUTPUT_KEY is INPUT_KEY"),
    (["in.csv", "datasets/time_to_dispatch_2026-01-01T00:00:00.csv"], "is under datasets/"),
    (["in.csv", "out.csv", "--max-reject-fraction", "1.5"], "--max-reject-fraction must be in [0, 1]"),
    (["in.csv", "out.csv", "--since", "2026-01-01"], "--since and --until go with --backfill"),
    (["--backfill", "--model", "abc"], "--backfill takes no INPUT_KEY, OUTPUT_KEY or --model"),
    (["--backfill", "--since", "last week"], "not an ISO-8601 date or date-time: 'last week'"),
    (["--backfill", "--since", "2026-02-01", "--until", "2026-01-01"], "is not before --until"),
    (["in.csv", "out.csv", "--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_bad_arguments_exit_1_with_one_error_line(s3_env: Dict[str, str], args: List[str], reason: str) -> None:
    result = score("bucket", s3_env, *args)

    assert result.returncode == 1
    (error,) = error_lines(result.stdout)
    assert "Invalid arguments passed to score_batch.py" in error and reason in error
    assert "usage: python -m pipeline.score_batch BUCKET INPUT_KEY OUTPUT_KEY" in error


@pytest.mark.parametrize("bucket_name, args", [
    (None, ["in/" + "k" * 100_000, "out.csv"]),
    (None, ["in.csv", "out/" + "k" * 100_000]),
    (None, ["in/" + "k" * 100_000, "in/" + "k" * 100_000]),
    ("b" * 100_000, ["in.csv", "out.csv"]),
    (None, ["in.csv", "out.csv", "--" + "f" * 100_000]),
], ids=["input key", "output key", "output key is input key", "bucket", "unknown option"])
def test_a_100_kb_argument_is_quoted_cut_short_in_the_one_error_line(
    s3_env: Dict[str, str], bucket_with_model: str, bucket_name: Optional[str], args: List[str]
) -> None:
    result = score(bucket_name or bucket_with_model, s3_env, *args)

    assert result.returncode == 1
    (error,) = error_lines(result.stdout)
    assert "Invalid arguments passed to score_batch.py" in error
    assert max(len(line) for line in result.stdout.splitlines()) < 3 * MESSAGES.max_argument_error_chars


@pytest.mark.parametrize("output", ["report", "predictions/time_to_dispatch_2026-10-02T23:00:00.csv"])
def test_output_under_the_pipelines_own_prefixes_is_refused_and_nothing_is_written(
    s3: Any, s3_env: Dict[str, str], bucket: str, trained_model: Model, output: str
) -> None:
    # The report is served as HTML: a batch output over it would put a file's cells on the page.
    [model] = models_created(bucket, trained_model, [1])
    output = str(model.report_key) if output == "report" else output
    prefix = output.split("/", 1)[0] + "/"
    before = keys(s3, bucket, prefix)
    put_csv(s3, bucket, "in/rep.csv", [COLUMNS, ["<script>alert(1)</script>", "SKU001", "north", "1"]])

    result = score(bucket, s3_env, "in/rep.csv", output)

    assert result.returncode == 1, result.stdout
    (error,) = error_lines(result.stdout)
    assert f"OUTPUT_KEY {output!r} is under {prefix}" in error
    assert keys(s3, bucket, prefix) == before
    assert b"<script>" not in s3.get_object(Bucket=bucket, Key=str(model.report_key))["Body"].read()


# --- the same command line, in-process ----------------------------------------------------

def test_main_in_process_scores_the_file_and_returns_0(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str, cli_output: Callable[[], List[str]]
) -> None:
    put_csv(s3, bucket_with_model, "in/orders.csv", [COLUMNS] + ROWS)

    assert score_batch.CLI.main([bucket_with_model, "in/orders.csv", "out/orders.csv"]) == 0

    assert error_lines("\n".join(cli_output())) == []
    assert read_csv(s3, bucket_with_model, "out/orders.csv")[0] == COLUMNS + [
        "est_hours_to_dispatch", "upper_hours_to_dispatch", "extrapolated"]


def test_main_in_process_with_input_that_is_not_utf8_returns_1_saying_so_and_writes_nothing(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str, cli_output: Callable[[], List[str]]
) -> None:
    s3.put_object(Bucket=bucket_with_model, Key="in/orders.csv", Body=b"orders_placed,product_code\n\xff\xfe,SKU001\n")

    assert score_batch.CLI.main([bucket_with_model, "in/orders.csv", "out/orders.csv"]) == 1

    [line] = error_lines("\n".join(cli_output()))
    assert " - score_batch failed: the input is not UTF-8 text: 'utf-8' codec can't decode byte 0xff" in line
    assert keys(s3, bucket_with_model, "out/") == []


# --- the backfill ------------------------------------------------------------------------

@pytest.fixture
def weekly_bucket(s3: Any, bucket: str, trained_model: Model) -> str:
    """Four weekly datasets from LOCAL.synthetic_first_drop; models created before weeks 2 and 3, none before week 1."""
    for week in generate_weeks(4, rows_per_week=300, seed=7):
        put_dataset(bucket, week.data, week.timestamp, s3)
    persist_model_copy(bucket, trained_model, LOCAL.synthetic_first_drop + timedelta(days=2), "aaaa0001")
    persist_model_copy(bucket, trained_model, LOCAL.synthetic_first_drop + timedelta(days=9), "bbbb0002")
    return bucket


def dataset_keys(bucket: str) -> List[str]:
    return [item.key for item in list_datasets(bucket)]


def backtest(s3: Any, bucket: str) -> Dict[str, Any]:
    return dict(json.loads(s3.get_object(Bucket=bucket, Key=LAYOUT.backtest_key)["Body"].read()))


def test_backfill_scores_each_week_with_the_model_live_when_it_was_dropped(
    s3: Any, s3_env: Dict[str, str], weekly_bucket: str
) -> None:
    result = score(weekly_bucket, s3_env, "--backfill")

    assert result.returncode == 0, result.stdout
    first, *scored = dataset_keys(weekly_bucket)
    summary = backtest(s3, weekly_bucket)
    assert [(w["dataset_key"], w["model_id"]) for w in summary["weeks"]] == [
        (scored[0], "aaaa0001"), (scored[1], "bbbb0002"), (scored[2], "bbbb0002")]
    assert summary["skipped_without_model"] == [first]
    assert [model_id_of_output(s3, weekly_bucket, predictions_key(k)) for k in scored] == [
        "aaaa0001", "bbbb0002", "bbbb0002"]


def test_backfill_predictions_hold_the_rows_the_actual_hours_and_the_estimate(
    s3: Any, s3_env: Dict[str, str], weekly_bucket: str, trained_model: Model
) -> None:
    assert score(weekly_bucket, s3_env, "--backfill").returncode == 0

    key = dataset_keys(weekly_bucket)[1]
    header, *rows = read_csv(s3, weekly_bucket, predictions_key(key))
    dataset = read_csv(s3, weekly_bucket, key)
    assert header == ["hours_to_dispatch", "orders_placed", "product_code", "est_hours_to_dispatch",
                      "upper_hours_to_dispatch", "extrapolated"]
    assert [row[:3] for row in rows] == dataset[1:]
    assert [float(row[3]) for row in rows] == [trained_model.predict_one(r[2], float(r[1])) for r in rows]


def test_backtest_json_has_rows_mae_r2_and_mean_error_by_product_per_week(
    s3: Any, s3_env: Dict[str, str], weekly_bucket: str
) -> None:
    assert score(weekly_bucket, s3_env, "--backfill").returncode == 0

    week = backtest(s3, weekly_bucket)["weeks"][0]
    assert week["rows"] == 300 and week["rows_rejected"] == 0
    assert 0.5 < week["mae"] < 1.5 and 0.9 < week["r2"] < 1.0
    assert sorted(week["mean_error_by_product"]) == ["SKU001", "SKU002", "SKU003", "SKU004", "SKU005"]
    png = s3.get_object(Bucket=weekly_bucket, Key=LAYOUT.backtest_plot_key)["Body"].read()
    assert png.startswith(b"\x89PNG")


def test_backfill_skips_weeks_already_scored_by_the_same_model(
    s3: Any, s3_env: Dict[str, str], weekly_bucket: str
) -> None:
    assert score(weekly_bucket, s3_env, "--backfill").returncode == 0
    versions = {k: s3.head_object(Bucket=weekly_bucket, Key=predictions_key(k))["VersionId"]
                for k in dataset_keys(weekly_bucket)[1:]}

    result = score(weekly_bucket, s3_env, "--backfill")

    assert result.returncode == 0
    assert "0 week(s) scored, 3 already done, 1 without a model" in result.stdout
    assert {k: s3.head_object(Bucket=weekly_bucket, Key=predictions_key(k))["VersionId"]
            for k in versions} == versions


def test_backfill_rescores_weeks_whose_model_was_rejected_since(
    s3: Any, s3_env: Dict[str, str], weekly_bucket: str
) -> None:
    assert score(weekly_bucket, s3_env, "--backfill").returncode == 0
    (second,) = [m for m in list_models(weekly_bucket) if m.key.endswith("bbbb0002.pkl")]
    put_status_change(weekly_bucket, StatusChange(
        second.key, REJECT, "bad week", "tester", LOCAL.synthetic_first_drop + timedelta(days=30)))

    result = score(weekly_bucket, s3_env, "--backfill")

    assert result.returncode == 0
    assert "2 week(s) scored, 1 already done" in result.stdout
    assert [w["model_id"] for w in backtest(s3, weekly_bucket)["weeks"]] == ["aaaa0001"] * 3


def test_backfill_since_and_until_bound_the_weeks_by_date(
    s3: Any, s3_env: Dict[str, str], weekly_bucket: str
) -> None:
    third = LOCAL.synthetic_first_drop + timedelta(weeks=2)

    result = score(weekly_bucket, s3_env, "--backfill", "--since", f"{third:%Y-%m-%d}", "--until", f"{third:%Y-%m-%d}")

    assert result.returncode == 0, result.stdout
    assert [w["dataset_key"] for w in backtest(s3, weekly_bucket)["weeks"]] == [dataset_keys(weekly_bucket)[2]]


# --- a header a file controls is quoted cut short -----------------------------------------------

@pytest.mark.parametrize("header, named", [
    (["x" * 130_000], f"its header is {'x' * 100!r}... (130000 characters)"),
    ([f"column_{i}" for i in range(100_000)], "its header is 'column_0', 'column_1', 'column_2', 'column_3', "
                                              "'column_4' and 99995 more"),
], ids=["a 130,000-character name", "100,000 columns"])
def test_a_header_without_the_features_is_named_cut_short_in_one_error_line(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str, header: List[str], named: str
) -> None:
    put_csv(s3, bucket_with_model, "in/orders.csv", [header, ["1"] * len(header)])

    result = score(bucket_with_model, s3_env, "in/orders.csv", "out/orders.csv")

    assert result.returncode == 1
    [line] = error_lines(result.stdout)
    assert f"the input has no column orders_placed or product_code; {named}" in line
    assert len(line) < 2_000
    assert keys(s3, bucket_with_model, "out/") == []


def test_backfill_refuses_two_weeks_writing_one_key_and_writes_nothing(
    s3: Any, s3_env: Dict[str, str], weekly_bucket: str
) -> None:
    # A dataset named like another week's rejects: its predictions would overwrite them.
    first = dataset_keys(weekly_bucket)[-1]
    twin = first + LAYOUT.rejects_suffix
    s3.copy_object(Bucket=weekly_bucket, Key=twin, CopySource={"Bucket": weekly_bucket, "Key": first})
    assert twin in dataset_keys(weekly_bucket)

    result = score(weekly_bucket, s3_env, "--backfill")

    assert result.returncode == 1
    (error,) = error_lines(result.stdout)
    assert f"would both be written to '{predictions_key(twin)}'; nothing was written" in error
    assert keys(s3, weekly_bucket, LAYOUT.predictions_prefix) == []
