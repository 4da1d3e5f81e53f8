"""bodywork.yaml as Bodywork 3.0's own parser reads it: the DAG and the stages are as intended."""
import pytest
from bodywork.config import BatchStageConfig, BodyworkConfig, ServiceStageConfig
from bodywork.constants import BODYWORK_CONFIG_VERSION

from image.tag import image_tag

from pipeline.settings import ENVIRONMENT, LOCAL

AWS_VARIABLES = [ENVIRONMENT.aws_access_key_id, ENVIRONMENT.aws_secret_access_key, ENVIRONMENT.aws_default_region]
AWS_SECRET = "aws-credentials"
SIGNING_SECRET = ("model-signing", ENVIRONMENT.signing_key)


def test_config_is_written_for_this_bodywork_config_version() -> None:
    # BodyworkConfig refuses any other version; this pins which one that is.
    assert BODYWORK_CONFIG_VERSION == "1.1"


def test_pipeline_runs_in_the_projects_runtime_image_built_from_this_commit(bodywork_config: BodyworkConfig) -> None:
    repository, tag = bodywork_config.pipeline.docker_image.rsplit(":", 1)
    assert (repository.endswith(".amazonaws.com/time-to-dispatch-runtime"), tag) == (True, image_tag())


def test_pipeline_deploys_to_the_pipelines_namespace(bodywork_config: BodyworkConfig) -> None:
    assert (bodywork_config.pipeline.name, bodywork_config.pipeline.namespace) == (
        "time-to-dispatch", "pipelines"
    )


def test_dag_trains_then_serves_and_consumes_the_stream(bodywork_config: BodyworkConfig) -> None:
    assert bodywork_config.pipeline.workflow == [["train_model"], ["serve_model", "stream_predict"]]


def test_pipeline_takes_its_secrets_from_a_group(bodywork_config: BodyworkConfig) -> None:
    assert bodywork_config.pipeline.secrets_group == "prod"


def test_train_stage_is_a_batch_job_running_the_train_module(bodywork_config: BodyworkConfig) -> None:
    stage = bodywork_config.stages["train_model"]
    assert isinstance(stage, BatchStageConfig)
    assert stage.executable_module_path == LOCAL.repo_root / "pipeline" / "train_model.py"
    assert stage.args == ["time-to-dispatch", "0.9", "0.95"]


def test_train_stage_retries_a_failed_run(bodywork_config: BodyworkConfig) -> None:
    stage = bodywork_config.stages["train_model"]
    assert isinstance(stage, BatchStageConfig)
    assert stage.retries == 2


def test_serve_stage_is_a_service_running_the_serve_module(bodywork_config: BodyworkConfig) -> None:
    stage = bodywork_config.stages["serve_model"]
    assert isinstance(stage, ServiceStageConfig)
    assert stage.executable_module_path == LOCAL.repo_root / "pipeline" / "serve_model.py"
    assert stage.args == ["time-to-dispatch", "--drain-seconds", "5"]


def test_serve_stage_has_two_replicas_on_port_8000_behind_the_ingress(
    bodywork_config: BodyworkConfig,
) -> None:
    stage = bodywork_config.stages["serve_model"]
    assert isinstance(stage, ServiceStageConfig)
    assert (stage.replicas, stage.port, stage.create_ingress) == (2, 8000, True)


def test_stream_stage_is_a_service_running_the_stream_consumer(bodywork_config: BodyworkConfig) -> None:
    stage = bodywork_config.stages["stream_predict"]
    assert isinstance(stage, ServiceStageConfig)
    assert stage.executable_module_path == LOCAL.repo_root / "pipeline" / "stream_predict.py"
    assert stage.args == ["time-to-dispatch", "--input-stream", "time-to-dispatch-orders",
                          "--output-stream", "time-to-dispatch-estimates"]


def test_stream_stage_is_one_replica_on_port_8001_without_an_ingress(bodywork_config: BodyworkConfig) -> None:
    stage = bodywork_config.stages["stream_predict"]
    assert isinstance(stage, ServiceStageConfig)
    assert (stage.replicas, stage.port, stage.create_ingress) == (1, 8001, False)


@pytest.mark.parametrize("stage", ["train_model", "serve_model", "stream_predict"])
def test_stage_gets_the_aws_credentials_and_the_signing_key_from_secrets(
    bodywork_config: BodyworkConfig, stage: str
) -> None:
    assert bodywork_config.stages[stage].env_vars_from_secrets == [
        *((AWS_SECRET, name) for name in AWS_VARIABLES), SIGNING_SECRET
    ]
