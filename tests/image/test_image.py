"""The stages' runtime image, built here from the Dockerfile, run as Bodywork's pods run it.

A pod of Bodywork's runs `bodywork stage REPO_URL STAGE --branch=master` as the container's
command (it replaces the image's ENTRYPOINT): Bodywork clones the repository, pip-installs the
stage's `requirements`, then runs the stage module. Here the same command runs in a container
of the image (`--entrypoint bodywork`), cloning a git repository of the working tree from a
read-only bind mount over `file://`, with pip barred from any index, against the local S3
server on the host (the containers share the host's network, so everything stays on
127.0.0.1). The stages also run in the image without Bodywork, as an engineer would run them.
"""
import re
import time
from typing import Any, Dict, Iterator, List, NamedTuple, Sequence

import boto3
import httpx
import pytest
import yaml

from pipeline.artefact.model import Model
from pipeline.local.local_s3 import LocalS3
from pipeline.model_registry.live_model import get_live_model
from pipeline.serve import api_docs
from pipeline.settings import API, ENVIRONMENT, LAYOUT, LOCAL
from pipeline.storage.layout import latest_object
from tests.helpers import TEST_SIGNING_KEY, bucket_with_weeks, port_accepts
from tests.image.conftest import REPO_MOUNT, StageRepo, podman

REPO_URL = f"file://{REPO_MOUNT}"
PREDICTION_REQUEST = {"product_code": "SKU001", "orders_placed": 112}
# podman stop sends SIGTERM, then SIGKILL after this many seconds (exit code 137): a stage that
# ignores SIGTERM ends that way. Kubernetes's default grace period is 30 s.
STOP_GRACE_SECONDS = 30
STAGE_TIMEOUT = 600
LOG_TAIL = 4000


def bodywork_config() -> Dict[str, Any]:
    config = yaml.safe_load((LOCAL.repo_root / "bodywork.yaml").read_text())
    assert isinstance(config, dict)
    return config


def environment_options(variables: Dict[str, str]) -> List[str]:
    return [option for name, value in variables.items() for option in ("--env", f"{name}={value}")]


@pytest.fixture(scope="module")
def s3_client(local_s3: LocalS3) -> Any:
    return boto3.client(
        "s3", endpoint_url=local_s3.endpoint, region_name=LOCAL.region,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )


@pytest.fixture(scope="module")
def production_bucket(s3_client: Any) -> str:
    """The bucket bodywork.yaml's stages name, which the stages run by Bodywork use."""
    stages = bodywork_config()["stages"]
    assert stages["train_model"]["args"][0] == stages["serve_model"]["args"][0]
    return bucket_with_weeks(s3_client, stages["train_model"]["args"][0])


@pytest.fixture(scope="module")
def own_bucket(s3_client: Any) -> str:
    """A bucket for the stages run without Bodywork."""
    return bucket_with_weeks(s3_client, "ttd-image-direct")


@pytest.fixture(scope="module")
def stage_environment(local_s3: LocalS3, stage_repo: StageRepo) -> List[str]:
    """podman options: the stage's environment in a pod (the secrets' AWS variables and model
    signing key, Bodywork's GIT_COMMIT_HASH), pip with no index, the repository's mount."""
    variables = {
        **local_s3.environment(),
        ENVIRONMENT.signing_key: TEST_SIGNING_KEY,
        ENVIRONMENT.git_commit: stage_repo.commit,
        "PIP_NO_INDEX": "1",
    }
    return ["--network", "host", *environment_options(variables), *stage_repo.mount()]


class StageRun(NamedTuple):
    """A stage that ran to its end in a container: its exit code and everything it printed."""

    exit_code: int
    log: str


def run_in_image(image: str, *command: str, options: Sequence[str] = (), timeout: float = 120) -> str:
    """Run `command` in a throw-away container of the image; fail on a non-zero exit.
    Returns its output."""
    result = podman("run", "--rm", *options, image, *command, timeout=timeout)
    assert result.returncode == 0, result.stdout[-LOG_TAIL:] + result.stderr[-LOG_TAIL:]
    return result.stdout


# --- the image itself ----------------------------------------------------------------------

def test_image_runs_as_a_user_other_than_root(runtime_image: str) -> None:
    assert run_in_image(runtime_image, "id", "-u").strip() == "10001"


def test_image_has_no_compiler_or_build_tool(runtime_image: str) -> None:
    found = run_in_image(
        runtime_image, "sh", "-c", "for tool in gcc cc c++ g++ make; do command -v $tool; done; true"
    )
    assert found.split() == []


def test_image_python_is_3_11(runtime_image: str) -> None:
    assert run_in_image(runtime_image, "python", "-c", "import sys; print(sys.version_info[:2])").strip() == "(3, 11)"


def test_image_bodywork_command_is_the_signal_forwarding_wrapper_of_bodywork_3_0_12(runtime_image: str) -> None:
    probe = "command -v bodywork; head -1 \"$(command -v bodywork)\"; bodywork version"
    assert run_in_image(runtime_image, "sh", "-c", probe).split() == [
        "/opt/venv/bin/bodywork", "#!/bin/sh", "3.0.12",
    ]


def test_image_has_the_files_the_api_docs_page_serves(runtime_image: str) -> None:
    # The service serves Swagger UI's assets itself (no CDN): they must be in the image.
    probe = ("import importlib.resources as r, sys; d = r.files(sys.argv[1]).joinpath('static'); "
             "print(*(len(d.joinpath(n).read_bytes()) > 0 for n in sys.argv[2:]))")
    output = run_in_image(runtime_image, "python", "-c", probe, api_docs.ASSETS_PACKAGE, *api_docs.ASSETS)
    assert output.split() == ["True"] * len(api_docs.ASSETS)


@pytest.mark.parametrize("stage", ["train_model", "serve_model", "stream_predict"])
def test_stage_requirements_are_all_satisfied_in_the_image_without_any_index(runtime_image: str, stage: str) -> None:
    """What Bodywork's `pip install` finds in the pod: nothing to install, nothing to fetch."""
    requirements = bodywork_config()["stages"][stage]["requirements"]
    output = run_in_image(
        runtime_image, "pip", "install", "--no-index", *requirements, options=["--network", "none"]
    )
    satisfied = re.findall(r"^Requirement already satisfied: (\S+)", output, re.MULTILINE)
    assert (len(satisfied) >= len(requirements), "Successfully installed" in output) == (True, False), output


def test_image_bodywork_skips_the_docker_hub_lookup_for_an_image_in_another_registry(runtime_image: str) -> None:
    """Bodywork refuses to deploy an image it cannot find on Docker Hub; the wrapper lets it
    deploy the image from the team's registry (no network in this container: no lookup)."""
    probe = (
        "import sys; sys.path.insert(0, '/opt/bodywork-entry'); import bodywork_entry; "
        "from bodywork import workflow_execution as w; "
        "print(w.image_exists_on_dockerhub('123456789012.dkr.ecr.eu-west-2.amazonaws.com/time-to-dispatch-runtime', "
        "'0123456789abcdef'))"
    )
    output = run_in_image(runtime_image, "python", "-c", probe, options=["--network", "none"])
    assert output.strip().splitlines()[-1] == "True"


def test_image_bodywork_still_looks_up_a_docker_hub_image_there(runtime_image: str) -> None:
    probe = (
        "import sys; sys.path.insert(0, '/opt/bodywork-entry'); import bodywork_entry; "
        "from bodywork import workflow_execution as w; "
        "w.image_exists_on_dockerhub('bodyworkml/bodywork-core', '3.0')"
    )
    result = podman("run", "--rm", "--network", "none", runtime_image, "python", "-c", probe)
    assert "BodyworkDockerImageError: cannot connect to https://hub.docker.com" in result.stderr, result.stderr


# --- the stages in the image, without Bodywork ---------------------------------------------

def stage_module_options(stage_environment: List[str]) -> List[str]:
    """Run a stage module as Bodywork does: from pipeline/ with the repository on PYTHONPATH."""
    return [*stage_environment, "--workdir", f"{REPO_MOUNT}/pipeline", "--env", f"PYTHONPATH={REPO_MOUNT}",
            "--env", "PYTHONDONTWRITEBYTECODE=1"]


@pytest.fixture(scope="module")
def direct_train_run(runtime_image: str, stage_environment: List[str], own_bucket: str) -> StageRun:
    """`python train_model.py BUCKET 0.9 0.95` in the image, as Bodywork runs the module."""
    result = podman(
        "run", "--rm", *stage_module_options(stage_environment), runtime_image,
        "python", "train_model.py", own_bucket, "0.9", "0.95", timeout=STAGE_TIMEOUT,
    )
    return StageRun(result.returncode, result.stdout + result.stderr)


def test_train_stage_in_the_image_exits_0(direct_train_run: StageRun) -> None:
    assert direct_train_run.exit_code == 0, direct_train_run.log[-LOG_TAIL:]


def test_train_stage_in_the_image_persists_a_model_of_the_newest_week(
    direct_train_run: StageRun, own_bucket: str, s3_client: Any
) -> None:
    model = get_live_model(own_bucket, client=s3_client)
    newest = latest_object(own_bucket, LAYOUT.datasets_prefix, ".csv", s3_client)
    assert model.dataset.key == newest.key, direct_train_run.log[-LOG_TAIL:]


class ServiceRun(NamedTuple):
    """A service in a container: its answer to one prediction, then how it stopped."""

    response: httpx.Response
    exit_code: int
    stop_seconds: float
    log: str


def run_service(image: str, name: str, options: List[str], command: List[str], port: int) -> ServiceRun:
    """Start a container, wait until the port answers, ask one prediction, then `podman stop`
    it (SIGTERM, and SIGKILL after STOP_GRACE_SECONDS) and wait for its end."""
    podman("rm", "--force", name)
    started = podman("run", "--detach", "--name", name, *options, image, *command)
    assert started.returncode == 0, started.stderr
    try:
        deadline = time.monotonic() + bodywork_config()["stages"]["serve_model"]["service"]["max_startup_time_seconds"]
        while not port_accepts(port):
            running = podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
            if running != "true" or time.monotonic() > deadline:
                pytest.fail(f"the service never opened port {port}:\n{podman('logs', name).stdout[-LOG_TAIL:]}")
            time.sleep(0.2)
        url = f"http://{LOCAL.loopback_host}:{port}{API.predict_path}"
        response = httpx.post(url, json=PREDICTION_REQUEST, timeout=10)
        signalled = time.monotonic()
        podman("stop", "--time", str(STOP_GRACE_SECONDS), name, timeout=STOP_GRACE_SECONDS + 60)
        stop_seconds = time.monotonic() - signalled
        exit_code = int(podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip())
        logs = podman("logs", name)
        print(f"{name}: exit code {exit_code}, {stop_seconds:.1f} s from SIGTERM to the container's end")
        return ServiceRun(response, exit_code, stop_seconds, logs.stdout + logs.stderr)
    finally:
        podman("rm", "--force", name)


def expected_answer(model: Model) -> Dict[str, Any]:
    estimate = model.estimate_one("SKU001", 112)
    return {
        "est_hours_to_dispatch": pytest.approx(estimate.est_hours_to_dispatch),
        "model_version": str(model),
        "upper_hours_to_dispatch": pytest.approx(estimate.upper_hours_to_dispatch),
        "extrapolated": estimate.extrapolated,
    }


def test_serve_stage_in_the_image_answers_a_prediction_on_the_host_port(
    runtime_image: str, stage_environment: List[str], direct_train_run: StageRun, own_bucket: str,
    s3_client: Any, serve_port: int,
) -> None:
    assert direct_train_run.exit_code == 0, "the service needs the model the train stage persists"
    run = run_service(
        runtime_image, "ttd-test-serve", stage_module_options(stage_environment),
        ["python", "serve_model.py", own_bucket, "--host", LOCAL.loopback_host, "--port", str(serve_port)], serve_port,
    )
    model = get_live_model(own_bucket, client=s3_client)
    assert (run.response.status_code, run.response.json()) == (200, expected_answer(model)), run.log[-LOG_TAIL:]


# --- the stages run by Bodywork's stage runner in the image, as in a pod -------------------

@pytest.fixture(scope="module")
def train_run(runtime_image: str, stage_environment: List[str], production_bucket: str) -> StageRun:
    """`bodywork stage REPO_URL train_model --branch=master` as the pod's command."""
    result = podman(
        "run", "--rm", *stage_environment, "--entrypoint", "bodywork", runtime_image,
        "stage", REPO_URL, "train_model", "--branch=master", timeout=STAGE_TIMEOUT,
    )
    return StageRun(result.returncode, result.stdout + result.stderr)


def test_train_stage_run_by_bodywork_in_the_image_exits_0(train_run: StageRun) -> None:
    assert train_run.exit_code == 0, train_run.log[-LOG_TAIL:]


def test_train_stage_run_by_bodywork_in_the_image_installs_nothing(train_run: StageRun) -> None:
    assert re.findall(r"^(?:Collecting|Downloading|Successfully installed) .*", train_run.log, re.MULTILINE) == []


def test_train_stage_run_by_bodywork_in_the_image_persists_a_model_of_this_commit(
    train_run: StageRun, production_bucket: str, s3_client: Any, stage_repo: StageRepo,
) -> None:
    model = get_live_model(production_bucket, client=s3_client)
    newest = latest_object(production_bucket, LAYOUT.datasets_prefix, ".csv", s3_client)
    assert (model.dataset.key, model.git_commit) == (newest.key, stage_repo.commit), train_run.log[-LOG_TAIL:]


@pytest.fixture(scope="module")
def service_run(
    runtime_image: str, stage_environment: List[str], train_run: StageRun, serve_port: int,
) -> Iterator[ServiceRun]:
    """`bodywork stage REPO_URL serve_model --branch=master` as the pod's command, asked one
    prediction, then stopped as Kubernetes stops a pod: SIGTERM to the container."""
    assert train_run.exit_code == 0, "the service needs the model the train stage persists"
    yield run_service(
        runtime_image, "ttd-test-bodywork-serve", [*stage_environment, "--entrypoint", "bodywork"],
        ["stage", REPO_URL, "serve_model", "--branch=master"], serve_port,
    )


def test_service_run_by_bodywork_in_the_image_answers_a_prediction_from_the_trained_model(
    service_run: ServiceRun, production_bucket: str, s3_client: Any,
) -> None:
    model = get_live_model(production_bucket, client=s3_client)
    assert service_run.response.status_code == 200, service_run.log[-LOG_TAIL:]
    assert service_run.response.json() == expected_answer(model)


def test_service_run_by_bodywork_in_the_image_stops_gracefully_on_sigterm_and_exits_0(service_run: ServiceRun) -> None:
    """SIGTERM reaches the service through the wrapper and Bodywork's runner: it logs its
    graceful stop, Bodywork reports success, and the container exits 0 before the SIGKILL."""
    stopped = [line for line in service_run.log.splitlines() if "stopped by SIGTERM after a graceful shutdown" in line]
    ran = "Successfully ran stage = serve_model" in service_run.log
    assert (service_run.exit_code, len(stopped), ran) == (0, 1, True), service_run.log[-LOG_TAIL:]
