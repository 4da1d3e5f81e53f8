"""The train stage's CLI in a subprocess, as engineers and Bodywork run it, on a real S3 API:
every failure exits 1 with one ERROR line and leaves the previous model the newest. The same
command line is also called in-process (`train_model.CLI.main`), which returns the exit code.
"""
from typing import Any, Callable, Dict, List

import pytest

from pipeline import train_model
from pipeline.artefact.model import Model
from pipeline.local.synthetic import generate_orders
from pipeline.model_registry.live_model import get_live_model, live_model_object
from pipeline.settings import ARTEFACT, ENVIRONMENT, LAYOUT, LOCAL, MESSAGES, S3, TRAIN
from pipeline.storage.signed_artefacts import put_model
from tests.helpers import LOG_LINE, error_lines, latest_drop, model_keys, newest_model_key, run_cli


def _cli_variants() -> List[Dict[str, Any]]:
    return [
        {"args": ["-m", "pipeline.train_model"], "cwd": LOCAL.repo_root},
        {"args": ["train_model.py"], "cwd": LOCAL.repo_root / "pipeline"},
    ]


@pytest.mark.e2e
@pytest.mark.parametrize("variant", _cli_variants(), ids=["python -m", "bodywork"])
def test_cli_trains_and_persists_a_model(s3: Any, s3_env: Dict[str, str], bucket_with_datasets: str,
                                         variant: Dict[str, Any]) -> None:
    result = run_cli([*variant["args"], bucket_with_datasets, "0.9", "0.8"], s3_env, cwd=variant["cwd"])

    assert result.returncode == 0, result.stdout + result.stderr
    keys = model_keys(s3, bucket_with_datasets)
    assert len(keys) == 1
    assert "persisted model time-to-dispatch:" in result.stdout
    assert f"to s3://{bucket_with_datasets}/{keys[0]}" in result.stdout
    assert isinstance(get_live_model(bucket_with_datasets), Model)
    assert all(LOG_LINE.match(line) for line in result.stdout.splitlines()), result.stdout


@pytest.mark.e2e
@pytest.mark.parametrize(
    "argv",
    [[], ["only-a-bucket"], ["bucket", "0.9"], ["bucket", "high", "0.8"], ["bucket", "0", "0.8"],
     ["bucket", "0.9", "1.5"], ["bucket", "0.9", "0.8", "surplus"], ["bucket", "0.9", "0.8", "--upper-coverage", "1"]],
)
def test_cli_with_bad_arguments_exits_1_with_the_usage(s3_env: Dict[str, str], argv: List[str]) -> None:
    result = run_cli(["-m", "pipeline.train_model", *argv], s3_env)

    assert result.returncode == 1
    errors = error_lines(result.stdout)
    assert len(errors) == 1
    assert "Invalid arguments passed to train_model.py" in errors[0]
    assert "usage: python -m pipeline.train_model S3_BUCKET R2_ERROR_THRESHOLD R2_WARNING_THRESHOLD" in errors[0]


@pytest.mark.e2e
def test_cli_run_as_bodywork_does_with_bad_arguments_exits_1(s3_env: Dict[str, str]) -> None:
    result = run_cli(["train_model.py", "bucket"], s3_env, cwd=LOCAL.repo_root / "pipeline")

    assert result.returncode == 1
    assert "Invalid arguments passed to train_model.py" in error_lines(result.stdout)[0]


@pytest.mark.e2e
def test_cli_with_a_missing_bucket_exits_1_naming_it(s3_env: Dict[str, str]) -> None:
    result = run_cli(["-m", "pipeline.train_model", "ttd-does-not-exist", "0.9", "0.8"], s3_env)

    assert result.returncode == 1
    assert error_lines(result.stdout) == [
        line for line in result.stdout.splitlines() if "s3://ttd-does-not-exist: bucket does not exist" in line
    ]
    assert len(error_lines(result.stdout)) == 1


@pytest.mark.e2e
def test_cli_with_no_datasets_exits_1_and_keeps_the_previous_model(
    s3: Any, s3_env: Dict[str, str], bucket: str, trained_model: Model
) -> None:
    put_model(bucket, trained_model)
    before = newest_model_key(bucket)

    result = run_cli(["-m", "pipeline.train_model", bucket, "0.9", "0.8"], s3_env)

    assert result.returncode == 1
    errors = error_lines(result.stdout)
    assert len(errors) == 1 and f"s3://{bucket}/datasets/: no .csv object with a timestamp in its key" in errors[0]
    assert newest_model_key(bucket) == before


@pytest.mark.e2e
@pytest.mark.parametrize(
    "body, reason",
    [
        (b"hours_to_dispatch,product_code\n1.0,SKU001\n", "missing column(s) orders_placed"),
        (b"\x00\x01\x02\xff\xfe", "not readable as CSV"),
        (generate_orders(200, seed=2).assign(orders_placed=-1).to_csv(index=False).encode(), "negative orders_placed"),
    ],
    ids=["missing column", "binary", "negative orders"],
)
def test_cli_with_a_bad_csv_exits_1_and_keeps_the_previous_model(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str, body: bytes, reason: str
) -> None:
    before = newest_model_key(bucket_with_model)
    key = f"datasets/time_to_dispatch_{latest_drop():%Y-%m-%dT%H|%M|%S}.csv"
    s3.put_object(Bucket=bucket_with_model, Key=key, Body=body)

    result = run_cli(["-m", "pipeline.train_model", bucket_with_model, "0.9", "0.8"], s3_env)

    assert result.returncode == 1
    errors = error_lines(result.stdout)
    assert len(errors) == 1 and reason in errors[0], result.stdout
    assert newest_model_key(bucket_with_model) == before


@pytest.mark.e2e
def test_cli_below_the_error_threshold_exits_1_and_keeps_the_previous_model(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str
) -> None:
    before = model_keys(s3, bucket_with_model)

    result = run_cli(["-m", "pipeline.train_model", bucket_with_model, "0.999", "0.9999"], s3_env)

    assert result.returncode == 1
    errors = error_lines(result.stdout)
    assert len(errors) == 1 and "is below the error threshold 0.999; no model persisted" in errors[0]
    assert model_keys(s3, bucket_with_model) == before


def test_cli_without_a_signing_key_exits_1_saying_so_before_reading_data(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str
) -> None:
    before = live_model_object(bucket_with_model, client=s3).key
    env = {name: value for name, value in s3_env.items() if name != ENVIRONMENT.signing_key}

    result = run_cli(["-m", "pipeline.train_model", bucket_with_model, "0.9", "0.95"], env)

    assert result.returncode == 1
    [line] = error_lines(result.stdout)
    assert "train_model failed: MODEL_SIGNING_KEY is not set: model artefacts are signed and verified with it" in line
    assert "training on" not in result.stdout
    assert live_model_object(bucket_with_model, client=s3).key == before


def test_cli_with_a_trailing_comma_on_every_row_names_it_not_orders_placed(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str
) -> None:
    week = generate_orders(1000, seed=1).to_csv(index=False).replace("\n", ",\n").replace("product_code,\n",
                                                                                          "product_code\n")
    s3.put_object(Bucket=bucket_with_model, Key="datasets/time_to_dispatch_2026-11-01T00:00:00.csv",
                  Body=week.encode())

    result = run_cli(["-m", "pipeline.train_model", bucket_with_model, "0.9", "0.95"], s3_env)

    assert result.returncode == 1
    [line] = error_lines(result.stdout)
    assert "line 2 has 4 fields, more than the header's 3; a trailing comma?" in line
    assert "orders_placed" not in line


def test_cli_with_a_dataset_over_the_size_limit_refuses_it_unread_and_keeps_the_previous_model(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str
) -> None:
    # Just over the dataset size limit, of rows the validation would refuse at once if the
    # stage read them: only the size may stop it.
    limit = S3.max_dataset_bytes
    row = b"1.0,-1,SKU001\n"
    body = b"hours_to_dispatch,orders_placed,product_code\n" + row * (limit // len(row) + 1)
    before = model_keys(s3, bucket_with_model)
    key = f"datasets/time_to_dispatch_{latest_drop():%Y-%m-%dT%H|%M|%S}.csv"
    s3.put_object(Bucket=bucket_with_model, Key=key, Body=body)

    result = run_cli(["-m", "pipeline.train_model", bucket_with_model, "0.9", "0.95"], s3_env)

    assert result.returncode == 1
    [line] = error_lines(result.stdout)
    assert f"s3://{bucket_with_model}/{key}: the dataset is {len(body):,} bytes, over the limit of {limit:,}" in line
    assert "orders_placed" not in line
    assert model_keys(s3, bucket_with_model) == before


# --- the same command line, in-process ------------------------------------------------------

def test_main_in_process_trains_persists_and_returns_0(
    s3: Any, s3_env: Dict[str, str], bucket_with_datasets: str, cli_output: Callable[[], List[str]]
) -> None:
    exit_code = train_model.CLI.main([bucket_with_datasets, "0.9", "0.8"])

    lines = cli_output()
    assert exit_code == 0, lines
    [key] = model_keys(s3, bucket_with_datasets)
    assert any(f"to s3://{bucket_with_datasets}/{key}" in line for line in lines)
    assert error_lines("\n".join(lines)) == []
    assert all(LOG_LINE.match(line) for line in lines), lines


@pytest.mark.e2e
def test_main_in_process_passes_the_calibration_switch_and_the_upper_coverage_to_the_stage(
    s3: Any, s3_env: Dict[str, str], bucket_with_datasets: str, cli_output: Callable[[], List[str]]
) -> None:
    exit_code = train_model.CLI.main([bucket_with_datasets, "0.9", "0.8", "--no-calibration", "--upper-coverage",
                                      "0.75"])

    assert exit_code == 0, cli_output()
    model = get_live_model(bucket_with_datasets)
    assert model.calibration is None and model.upper_bound is not None and model.upper_bound.coverage == 0.75
    assert any("calibration is off: the tree's estimate is served" in line for line in cli_output())


def test_main_in_process_without_a_signing_key_returns_1_with_the_one_error_line(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str, cli_output: Callable[[], List[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENVIRONMENT.signing_key)
    before = model_keys(s3, bucket_with_model)

    assert train_model.CLI.main([bucket_with_model, "0.9", "0.95"]) == 1

    [line] = error_lines("\n".join(cli_output()))
    assert (" - ERROR - test_train_model.test_main_in_process_without_a_signing_key_returns_1_with_the_one_error_line"
            " - train_model failed: MODEL_SIGNING_KEY is not set: ") in line
    assert model_keys(s3, bucket_with_model) == before


# --- bad data that must not reach a model: refused at validation, in one short ERROR line ------

def _week_in(s3: Any, bucket: str, frame: Any) -> str:
    key = f"datasets/time_to_dispatch_{latest_drop():%Y-%m-%dT%H|%M|%S}.csv"
    s3.put_object(Bucket=bucket, Key=key, Body=frame.to_csv(index=False).encode())
    return key


def test_cli_with_an_overlong_product_code_refuses_the_week_in_one_short_error_line(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str
) -> None:
    long_code = "X" * 130_000
    week = generate_orders(1000, seed=3)
    week.loc[week.index[:12], "product_code"] = long_code
    _week_in(s3, bucket_with_model, week)
    before = model_keys(s3, bucket_with_model)

    result = run_cli(["-m", "pipeline.train_model", bucket_with_model, "0.9", "0.8"], s3_env)

    assert result.returncode == 1, result.stdout[-2000:]
    [line] = error_lines(result.stdout)
    assert f"product_code longer than {TRAIN.max_product_code_chars} characters" in line
    assert "(130000 characters)" in line
    assert max(map(len, result.stdout.splitlines())) < 2_000
    assert model_keys(s3, bucket_with_model) == before


def test_cli_with_a_product_code_outside_the_character_set_refuses_the_week(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str
) -> None:
    week = generate_orders(1000, seed=3)
    week.loc[week.index[:12], "product_code"] = "SKU<script>"
    _week_in(s3, bucket_with_model, week)
    before = model_keys(s3, bucket_with_model)

    result = run_cli(["-m", "pipeline.train_model", bucket_with_model, "0.9", "0.8"], s3_env)

    assert result.returncode == 1, result.stdout[-2000:]
    [line] = error_lines(result.stdout)
    assert "12 row(s) with product_code outside the allowed characters" in line
    assert "'SKU<script>'" in line
    assert model_keys(s3, bucket_with_model) == before


def test_cli_with_60000_distinct_codes_names_a_few_and_counts_the_rest(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str
) -> None:
    week = generate_orders(60_000, seed=4)
    week["product_code"] = [f"P{i:06d}" for i in range(len(week))]
    _week_in(s3, bucket_with_model, week)

    result = run_cli(["-m", "pipeline.train_model", bucket_with_model, "0.9", "0.8"], s3_env)

    assert result.returncode == 1
    [line] = error_lines(result.stdout)
    assert "too few rows for product(s) P000000 (1), P000001 (1)" in line
    assert f"and {60_000 - MESSAGES.max_codes_named} more" in line
    assert max(map(len, result.stdout.splitlines())) < 2_000


def test_cli_with_a_row_above_the_trained_orders_limit_refuses_the_week_and_persists_nothing(
    s3: Any, s3_env: Dict[str, str], bucket_with_model: str
) -> None:
    week = generate_orders(1000, seed=5)
    week.loc[week.index[7], "orders_placed"] = 150_000
    _week_in(s3, bucket_with_model, week)
    before = model_keys(s3, bucket_with_model)
    reports_before = s3.list_objects_v2(Bucket=bucket_with_model, Prefix=LAYOUT.reports_prefix).get("KeyCount", 0)

    result = run_cli(["-m", "pipeline.train_model", bucket_with_model, "0.9", "0.8"], s3_env)

    assert result.returncode == 1, result.stdout[-2000:]
    [line] = error_lines(result.stdout)
    assert (f"1 row(s) with orders_placed above {ARTEFACT.max_trained_orders_placed:,} (e.g. 150000) "
            "at CSV line(s) 9") in line
    assert model_keys(s3, bucket_with_model) == before
    reports_after = s3.list_objects_v2(Bucket=bucket_with_model, Prefix=LAYOUT.reports_prefix).get("KeyCount", 0)
    assert reports_after == reports_before
