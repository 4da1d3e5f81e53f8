"""The history command against a real MLflow server: a bucket's past runs (persisted and refused,
one rejected) logged once, with their versions, the rejection's reason and `live`."""
from typing import Any, Callable, List

import pytest

from pipeline import registry
from pipeline.local.synthetic import generate_orders, generate_weeks
from pipeline.model_registry.operations import LIVE
from pipeline.settings import ENVIRONMENT
from pipeline.storage.datasets import put_dataset
from pipeline.tracking.mlflow_runs import REJECTED_TAG
from pipeline.train import champion, stage
from tests.helpers import MlflowServer, latest_drop, tracking_env


def test_the_history_command_fills_mlflow_from_a_bucket_with_existing_models_once(
    s3: Any, bucket: str, mlflow_server: MlflowServer, mlflow_reader: Any, monkeypatch: pytest.MonkeyPatch,
    cli_output: Callable[[], List[str]],
) -> None:
    monkeypatch.delenv(ENVIRONMENT.mlflow_tracking_uri, raising=False)
    weeks = generate_weeks(2, seed=100)
    put_dataset(bucket, weeks[0].data, weeks[0].timestamp, s3)
    first = stage.train(bucket, 0.9, 0.95)
    put_dataset(bucket, weeks[1].data, weeks[1].timestamp, s3)
    second = stage.train(bucket, 0.9, 0.95)
    put_dataset(bucket, generate_orders(100, seed=5), latest_drop(), s3)
    with pytest.raises(champion.ModelRefusedError):
        stage.train(bucket, 0.5, 0.6)
    assert registry.CLI.main([bucket, "reject", second.artefact_id, "--reason", "a bad week"]) == 0
    assert mlflow_reader.get_experiment_by_name(bucket) is None

    tracking_env(monkeypatch, mlflow_server.uri, bucket)
    cli_output()
    assert registry.CLI.main([bucket, "track-history"]) == 0
    assert "tracked 3 run(s); 0 already tracked" in cli_output()

    experiment = mlflow_reader.get_experiment_by_name(bucket)
    runs = sorted(mlflow_reader.search_runs([experiment.experiment_id]), key=lambda run: run.info.start_time)
    assert [run.info.status for run in runs] == ["FINISHED", "FINISHED", "FAILED"]
    assert [run.data.tags["artefact_id"] for run in runs[:2]] == [first.artefact_id, second.artefact_id]
    assert runs[0].info.start_time == int(first.created_at.timestamp() * 1000)
    assert runs[2].data.tags["refused_by"] == "champion"
    assert runs[1].data.metrics["metrics.r_squared"] == pytest.approx(second.metrics.r_squared)
    assert "report.html" in {item.path for item in mlflow_reader.list_artifacts(runs[2].info.run_id)}
    versions = {v.source: v for v in mlflow_reader.search_model_versions(f"name = '{bucket}'")}
    assert set(versions) == {f"s3://{bucket}/{first.artefact_key}", f"s3://{bucket}/{second.artefact_key}"}
    assert versions[f"s3://{bucket}/{second.artefact_key}"].tags[REJECTED_TAG] == "a bad week"
    assert mlflow_reader.get_model_version_by_alias(bucket, LIVE).source == f"s3://{bucket}/{first.artefact_key}"

    assert registry.CLI.main([bucket, "track-history"]) == 0
    assert "tracked 0 run(s); 3 already tracked" in cli_output()
    assert len(mlflow_reader.search_runs([experiment.experiment_id])) == 3


def test_the_history_command_without_a_tracking_server_is_one_error(
    bucket: str, monkeypatch: pytest.MonkeyPatch, cli_output: Callable[[], List[str]],
) -> None:
    monkeypatch.delenv(ENVIRONMENT.mlflow_tracking_uri, raising=False)
    assert registry.CLI.main([bucket, "track-history"]) == 1
    errors = [line for line in cli_output() if " - ERROR - " in line]
    assert len(errors) == 1 and "MLFLOW_TRACKING_URI is not set" in errors[0]
