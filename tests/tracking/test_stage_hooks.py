"""The train stage and the registry CLI against a real MLflow tracking server: every weekly run
(refused ones too) a run with its parameters, metrics, tags and report; every persisted model a
version whose source is its S3 artefact; `live` where the live-model rule says; and a server
that is down costing one WARNING, never the week."""
import logging
import socket
from datetime import timedelta
from typing import Any, List

import pytest

from pipeline import registry
from pipeline.local.synthetic import generate_orders, generate_weeks
from pipeline.model_registry.live_model import get_live_model, list_models
from pipeline.model_registry.operations import LIVE, REJECTED, model_entries
from pipeline.settings import ENVIRONMENT, LOCAL
from pipeline.storage.datasets import put_dataset
from pipeline.tracking.mlflow_client import TrackingError
from pipeline.tracking.mlflow_runs import REJECTED_TAG
from pipeline.train import champion, stage
from tests.helpers import MlflowServer, free_port, latest_drop, tracking_env

# A week of 100 orders: its model is far worse than one trained on 1,000 rows (tests/train/test_champion.py).
SMALL_WEEK_ROWS, SMALL_WEEK_SEED = 100, 5


def runs_oldest_first(reader: Any, experiment: str) -> List[Any]:
    found = reader.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment}"
    return sorted(reader.search_runs([found.experiment_id]), key=lambda run: run.info.start_time)


def test_three_weekly_trainings_one_refused_are_three_runs_two_versions_and_live_on_the_newest_accepted(
    s3: Any, bucket: str, mlflow_server: MlflowServer, mlflow_reader: Any, monkeypatch: pytest.MonkeyPatch,
    cli_output: Any,
) -> None:
    tracking_env(monkeypatch, mlflow_server.uri, bucket)
    weeks = generate_weeks(2, seed=100)
    put_dataset(bucket, weeks[0].data, weeks[0].timestamp, s3)
    first = stage.train(bucket, 0.9, 0.95)
    put_dataset(bucket, weeks[1].data, weeks[1].timestamp, s3)
    second = stage.train(bucket, 0.9, 0.95)
    put_dataset(bucket, generate_orders(SMALL_WEEK_ROWS, seed=SMALL_WEEK_SEED), latest_drop(), s3)
    with pytest.raises(champion.ModelRefusedError):
        stage.train(bucket, 0.5, 0.6)

    runs = runs_oldest_first(mlflow_reader, bucket)
    assert [run.info.status for run in runs] == ["FINISHED", "FINISHED", "FAILED"]
    accepted, refused = runs[1], runs[2]
    assert accepted.data.tags["artefact_id"] == second.artefact_id
    assert accepted.data.tags["artefact_uri"] == f"s3://{bucket}/{second.artefact_key}"
    assert accepted.data.tags["dataset.key"] == second.dataset.key
    assert accepted.data.tags["dataset.etag"] == second.dataset.etag
    assert accepted.data.tags["dataset.version_id"] == second.dataset.version_id
    assert accepted.data.tags["git_commit"] == second.git_commit
    assert accepted.data.tags["library.scikit-learn"] == second.library_versions["scikit-learn"]
    assert accepted.data.params["hyperparameter.max_depth"] == str(second.hyperparameters["max_depth"])
    assert accepted.data.params["grid_size"] == "300"
    assert accepted.data.params["r_squared_thresholds.error"] == "0.9"
    assert accepted.data.params["champion_tolerance"] == "0.2"
    assert accepted.data.params["rows.n_train"] == str(second.metrics.n_train)
    metrics = accepted.data.metrics
    assert metrics["metrics.r_squared"] == pytest.approx(second.metrics.r_squared)
    assert metrics["metrics.mean_absolute_error"] == pytest.approx(second.metrics.mean_absolute_error)
    assert metrics["champion.comparison.challenger_mae"] > 0
    assert metrics["monotonicity.total_decreasing_steps"] == second.monotonicity.total_decreasing_steps
    assert metrics["logic_headroom.smallest_rise_hours"] > 0
    assert "drift.statistics.orders_placed.PSI.value" in metrics, sorted(metrics)
    assert "drift.statistics.orders_placed.PSI.threshold" in accepted.data.params
    assert refused.data.tags["refused_by"] == "champion"
    assert refused.data.tags["gate.champion"].startswith("champion: new model's MAE")
    assert refused.data.tags["decision"] == "refused"
    assert "artefact_uri" not in refused.data.tags
    for run in runs:
        files = {item.path for item in mlflow_reader.list_artifacts(run.info.run_id)}
        assert {"report.json", "report.html"} <= files and len([f for f in files if f.endswith(".png")]) >= 2

    versions = sorted(mlflow_reader.search_model_versions(f"name = '{bucket}'"), key=lambda v: int(v.version))
    assert [v.source for v in versions] == [f"s3://{bucket}/{first.artefact_key}",
                                            f"s3://{bucket}/{second.artefact_key}"]
    assert [v.run_id for v in versions] == [runs[0].info.run_id, runs[1].info.run_id]
    assert mlflow_reader.get_model_version_by_alias(bucket, LIVE).source == f"s3://{bucket}/{second.artefact_key}"

    assert registry.CLI.main([bucket, "reject", second.artefact_id, "--reason", "late orders missing"]) == 0
    assert get_live_model(bucket).artefact_id == first.artefact_id
    assert mlflow_reader.get_model_version_by_alias(bucket, LIVE).version == versions[0].version
    assert mlflow_reader.get_model_version(bucket, versions[1].version).tags[REJECTED_TAG] == "late orders missing"

    assert registry.CLI.main([bucket, "restore", second.artefact_id]) == 0
    assert mlflow_reader.get_model_version_by_alias(bucket, LIVE).version == versions[1].version
    assert REJECTED_TAG not in mlflow_reader.get_model_version(bucket, versions[1].version).tags


def test_with_the_server_down_the_model_is_persisted_and_one_warning_names_the_server(
    s3: Any, bucket_with_datasets: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    down = f"http://{LOCAL.loopback_host}:{free_port()}"
    tracking_env(monkeypatch, down, bucket_with_datasets)
    with caplog.at_level(logging.INFO):
        model = stage.train(bucket_with_datasets, 0.9, 0.95)

    assert [item.key for item in list_models(bucket_with_datasets)] == [model.artefact_key]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "tracking" in r.getMessage()]
    assert len(warnings) == 1
    assert down in warnings[0] and f"not recorded: the run of model {model.artefact_id}" in warnings[0]


def test_tracking_required_with_the_server_down_fails_before_training(
    s3: Any, bucket_with_datasets: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    tracking_env(monkeypatch, f"http://{LOCAL.loopback_host}:{free_port()}", bucket_with_datasets)
    with pytest.raises(TrackingError, match="checked before training"):
        stage.train(bucket_with_datasets, 0.9, 0.95, tracking_required=True)
    assert list_models(bucket_with_datasets) == []


def test_a_later_run_registers_the_live_model_an_untracked_run_persisted(
    s3: Any, bucket: str, mlflow_server: MlflowServer, mlflow_reader: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    weeks = generate_weeks(2, seed=100)
    put_dataset(bucket, weeks[0].data, weeks[0].timestamp, s3)
    monkeypatch.delenv(ENVIRONMENT.mlflow_tracking_uri, raising=False)
    untracked = stage.train(bucket, 0.9, 0.95)
    tracking_env(monkeypatch, mlflow_server.uri, bucket)
    put_dataset(bucket, weeks[1].data, weeks[1].timestamp + timedelta(minutes=1), s3)
    tracked = stage.train(bucket, 0.9, 0.95)

    assert len(runs_oldest_first(mlflow_reader, bucket)) == 1
    sources = {v.source for v in mlflow_reader.search_model_versions(f"name = '{bucket}'")}
    assert sources == {f"s3://{bucket}/{tracked.artefact_key}"}
    assert untracked.artefact_key != tracked.artefact_key
    assert mlflow_reader.get_model_version_by_alias(bucket, LIVE).source == f"s3://{bucket}/{tracked.artefact_key}"


def test_a_reject_with_the_server_down_is_recorded_in_s3_with_one_warning(
    bucket_with_model: str, monkeypatch: pytest.MonkeyPatch, cli_output: Any,
) -> None:
    live = get_live_model(bucket_with_model)
    down = f"http://{LOCAL.loopback_host}:{free_port()}"
    tracking_env(monkeypatch, down, bucket_with_model)

    assert registry.CLI.main([bucket_with_model, "reject", live.artefact_id, "--reason", "bad week"]) == 0

    warnings = [line for line in cli_output() if " - WARNING - " in line and "experiment tracking" in line]
    assert len(warnings) == 1 and down in warnings[0] and "not recorded: the reject of" in warnings[0]
    assert [(entry.key, entry.status) for entry in model_entries(bucket_with_model)] == [
        (live.artefact_key, REJECTED)]


def test_with_a_server_that_never_answers_the_model_is_persisted_and_one_warning_names_it(
    s3: Any, bucket_with_datasets: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind((LOCAL.loopback_host, 0))
        silent.listen(16)  # connections are accepted by the kernel; nothing ever answers them
        uri = f"http://{LOCAL.loopback_host}:{silent.getsockname()[1]}"
        tracking_env(monkeypatch, uri, bucket_with_datasets)
        with caplog.at_level(logging.INFO):
            model = stage.train(bucket_with_datasets, 0.9, 0.95)

    assert [item.key for item in list_models(bucket_with_datasets)] == [model.artefact_key]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "tracking" in r.getMessage()]
    assert len(warnings) == 1 and uri in warnings[0] and "not recorded" in warnings[0]
