"""Every stage run by Bodywork's own stage runner, as the pods Bodywork creates run them.

A stage's pod runs the command of the Job or Deployment that Bodywork builds for it:
`bodywork stage REPO_URL STAGE --branch=master [TIME_LIMIT]`. Bodywork then clones the
repository, pip-installs the stage's `requirements`, and runs `python MODULE ARGS` from the
module's folder with the clone on PYTHONPATH (bodywork/stage_execution.py). Here that same
command runs with the repository made from the working tree (`file://`, see conftest.py), the
stage's AWS variables pointing at the local S3 server, and the bucket named in bodywork.yaml
holding synthetic weeks. The DAG's order is kept: serve_model serves, and stream_predict
predicts with, the model that train_model has just persisted.

pip runs with PIP_NO_INDEX: every stage requirement must already be satisfied by this
environment (tox installs requirements_pipe.txt), so the step takes a second and needs no
network; a requirement that is not satisfied fails the stage.

One change from production, in the clone's bodywork.yaml only: the service is given
`--host 127.0.0.1`, so that it listens on this machine's loopback rather than on every
interface. Its port stays bodywork.yaml's.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import boto3
import httpx
import pytest
from bodywork import k8s
from bodywork.config import BatchStageConfig, BodyworkConfig, ServiceStageConfig
from bodywork.git import get_git_commit_hash

from pipeline.artefact.model import Model
from pipeline.model_registry.live_model import get_live_model
from pipeline.settings import API, ENVIRONMENT, LAYOUT, LOCAL
from pipeline.storage.layout import latest_object
from tests.bodywork.conftest import BRANCH
from tests.helpers import TEST_SIGNING_KEY, bucket_with_weeks, read_stream_json

PREDICTION_REQUEST = {"product_code": "SKU001", "orders_placed": 112}
# How long the service may take to stop after SIGTERM (serve_model's graceful shutdown
# serves on for its 5 s drain, then gives requests in flight up to 20 s; none are in flight here).
STOP_TIMEOUT_SECONDS = 60
LOG_TAIL = 4000


@dataclass
class StageRun:
    """What a stage run did: its exit code and everything it printed."""

    exit_code: Optional[int]
    output: str

    def tail(self) -> str:
        return self.output[-LOG_TAIL:]


def pod_command(obj: Any) -> List[str]:
    """The command and arguments of the one container Bodywork put in a Job or Deployment."""
    (container,) = obj.spec.template.spec.containers
    return [*container.command, *container.args]


def pod_environment(s3_endpoint: str, commit: str) -> Dict[str, str]:
    """The stage container's environment: the secrets' AWS variables and signing key, Bodywork's
    GIT_COMMIT_HASH, and this environment's tools first on PATH (the image's `python` and
    `pip`). Nothing of this checkout leaks in: no PYTHONPATH, no other AWS settings."""
    env = {k: v for k, v in os.environ.items() if k != ENVIRONMENT.python_path and not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=s3_endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=LOCAL.region,
        GIT_COMMIT_HASH=commit,
        MODEL_SIGNING_KEY=TEST_SIGNING_KEY,
        PIP_NO_INDEX="1",
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    return env


@pytest.fixture(scope="module")
def s3_client(s3_endpoint: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name=LOCAL.region,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )


@pytest.fixture(scope="module")
def production_bucket(bodywork_config: BodyworkConfig, s3_client: Any) -> str:
    """The bucket the stages' args name, versioned, with three weekly datasets."""
    name = bodywork_config.stages["train_model"].args[0]
    assert bodywork_config.stages["serve_model"].args[0] == name
    return bucket_with_weeks(s3_client, name)


@pytest.fixture(scope="module")
def commit(stage_repo: Path) -> str:
    """The commit hash Bodywork would give the stages (it reads it from its own clone)."""
    return get_git_commit_hash(stage_repo)


@pytest.fixture(scope="module")
def train_run(
    bodywork_config: BodyworkConfig, stage_repo: Path, production_bucket: str, s3_endpoint: str,
    commit: str, tmp_path_factory: pytest.TempPathFactory,
) -> StageRun:
    """train_model run by `bodywork stage`, with the job's command and time limit."""
    stage = bodywork_config.stages["train_model"]
    assert isinstance(stage, BatchStageConfig)
    job = k8s.configure_batch_stage_job(
        bodywork_config.pipeline.namespace, stage.name, stage_repo.as_uri(), BRANCH,
        retries=stage.retries, timeout=stage.max_completion_time,
        image=bodywork_config.pipeline.docker_image,
        cpu_request=stage.cpu_request, memory_request=stage.memory_request,
    )
    result = subprocess.run(
        pod_command(job), cwd=tmp_path_factory.mktemp("train-pod"),
        env=pod_environment(s3_endpoint, commit), capture_output=True, text=True,
        timeout=stage.max_completion_time + 120,
    )
    return StageRun(result.returncode, result.stdout + result.stderr)


def test_train_stage_run_by_bodywork_exits_0(train_run: StageRun) -> None:
    assert train_run.exit_code == 0, train_run.tail()


def test_train_stage_run_by_bodywork_persists_a_model_of_the_newest_week(
    train_run: StageRun, production_bucket: str, s3_client: Any, commit: str
) -> None:
    model = get_live_model(production_bucket, client=s3_client)
    newest = latest_object(production_bucket, LAYOUT.datasets_prefix, ".csv", s3_client)
    assert (model.dataset.key, model.git_commit) == (newest.key, commit), train_run.tail()


@dataclass
class ServiceRun:
    """What happened to the service: its answer to a prediction, then how it stopped."""

    model: Model
    response: httpx.Response
    stage: StageRun
    service_left_running: bool


def port_is_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((LOCAL.loopback_host, port)) == 0


def child_pids(pid: int) -> List[int]:
    """The processes whose parent is `pid`."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def process_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


class ServicePod:
    """A service stage run by `bodywork stage` with its Deployment's command, as a pod runs it."""

    def __init__(self, runner: "subprocess.Popen[bytes]", module: str, port: int, log_path: Path) -> None:
        self.runner, self.module, self.port, self.log_path = runner, module, port, log_path
        self.stage_pid: Optional[int] = None

    def stage_process(self) -> int:
        """The stage's own process under Bodywork's runner (`python MODULE ...`)."""
        found = [pid for pid in child_pids(self.runner.pid)
                 if self.module.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(found) == 1, f"expected one {self.module} process under Bodywork's, found {found}"
        return found[0]

    def stop(self) -> StageRun:
        """SIGTERM to the stage's process, as Kubernetes sends it; Bodywork's runner then ends."""
        self.stage_pid = self.stage_process()
        os.kill(self.stage_pid, signal.SIGTERM)
        exit_code = self.runner.wait(timeout=STOP_TIMEOUT_SECONDS)
        return StageRun(exit_code, self.log_path.read_text())

    def left_running(self) -> bool:
        return (self.stage_pid is not None and process_exists(self.stage_pid)) or port_is_open(self.port)


@contextmanager
def service_stage(
    bodywork_config: BodyworkConfig, name: str, stage_repo: Path, commit: str, s3_endpoint: str, pod_dir: Path,
) -> Iterator[ServicePod]:
    """Start a service stage as its pod would, wait until its port opens (the probe's test), and
    kill whatever is left of it at the end."""
    stage = bodywork_config.stages[name]
    assert isinstance(stage, ServiceStageConfig)
    if port_is_open(stage.port):
        pytest.fail(f"port {stage.port} on {LOCAL.loopback_host} is already in use: cannot start {name} there")
    deployment = k8s.configure_service_stage_deployment(
        bodywork_config.pipeline.namespace, stage.name, bodywork_config.pipeline.name,
        stage_repo.as_uri(), commit, BRANCH, replicas=stage.replicas, port=stage.port,
        image=bodywork_config.pipeline.docker_image, cpu_request=stage.cpu_request,
        memory_request=stage.memory_request, startup_time_seconds=stage.max_startup_time,
    )
    log_path = pod_dir / "output.log"
    with open(log_path, "w") as log:
        runner = subprocess.Popen(
            pod_command(deployment), cwd=pod_dir, env=pod_environment(s3_endpoint, commit),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + stage.max_startup_time
        while not port_is_open(stage.port):
            if runner.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{name} never opened port {stage.port}:\n{log_path.read_text()[-LOG_TAIL:]}")
            time.sleep(0.2)
        yield ServicePod(runner, Path(stage.executable_module_path).name, stage.port, log_path)
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()


@pytest.fixture(scope="module")
def service_run(
    bodywork_config: BodyworkConfig, stage_repo: Path, production_bucket: str, s3_endpoint: str,
    s3_client: Any, commit: str, train_run: StageRun, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceRun]:
    """serve_model run by `bodywork stage` with the deployment's command: wait for its port,
    ask for one prediction, then send SIGTERM to the service's process and let it stop.

    (In a pod, Kubernetes sends SIGTERM to PID 1, which is Bodywork's runner; it has no
    handler for it, so as PID 1 it ignores it and the pod ends by SIGKILL after the grace
    period. docs/deployment.md, "6. History and logs", says what that means. Here the
    service gets the signal.)
    """
    assert train_run.exit_code == 0, "the service needs the model the train stage persists"
    with service_stage(bodywork_config, "serve_model", stage_repo, commit, s3_endpoint,
                       tmp_path_factory.mktemp("serve-pod")) as pod:
        response = httpx.post(
            f"http://{LOCAL.loopback_host}:{pod.port}{API.predict_path}", json=PREDICTION_REQUEST, timeout=10
        )
        stopped = pod.stop()
        yield ServiceRun(
            model=get_live_model(production_bucket, client=s3_client),
            response=response,
            stage=stopped,
            service_left_running=pod.left_running(),
        )


def test_service_run_by_bodywork_answers_a_prediction_from_the_trained_model(service_run: ServiceRun) -> None:
    assert service_run.response.status_code == 200, service_run.response.text
    estimate = service_run.model.estimate_one("SKU001", 112)
    assert service_run.response.json() == {
        "est_hours_to_dispatch": pytest.approx(estimate.est_hours_to_dispatch),
        "model_version": str(service_run.model),
        "upper_hours_to_dispatch": pytest.approx(estimate.upper_hours_to_dispatch),
        "extrapolated": estimate.extrapolated,
    }


def test_service_run_by_bodywork_stops_cleanly_on_sigterm(service_run: ServiceRun) -> None:
    assert service_run.stage.exit_code == 0, service_run.stage.tail()
    assert not service_run.service_left_running


# --- the stream consumer -----------------------------------------------------------------

@dataclass
class StreamRun:
    """What the stream consumer did with one order event, and how it stopped."""

    model: Model
    event: Dict[str, Any]
    predictions: List[Dict[str, Any]]
    ready: int
    stage: StageRun
    left_running: bool


@pytest.fixture(scope="module")
def stream_run(
    bodywork_config: BodyworkConfig, stage_repo: Path, production_bucket: str, s3_endpoint: str,
    s3_client: Any, commit: str, train_run: StageRun, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[StreamRun]:
    """stream_predict run by `bodywork stage` with its Deployment's command, against two streams
    made on the local server as docs/deployment.md makes them: one order event in, then SIGTERM."""
    assert train_run.exit_code == 0, "the consumer needs the model the train stage persists"
    args = bodywork_config.stages["stream_predict"].args
    input_stream, output_stream = (args[args.index(flag) + 1] for flag in ("--input-stream", "--output-stream"))
    kinesis = boto3.client("kinesis", endpoint_url=s3_endpoint, region_name=LOCAL.region,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
    for name in (input_stream, output_stream):
        kinesis.create_stream(StreamName=name, ShardCount=2)
        kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 1})
    event = {"order_id": "order-1", **PREDICTION_REQUEST, "basket": "kept as it is"}
    with service_stage(bodywork_config, "stream_predict", stage_repo, commit, s3_endpoint,
                       tmp_path_factory.mktemp("stream-pod")) as pod:
        # The port opens before the model is loaded; /ready says when the shards are read.
        deadline, ready = time.monotonic() + 60, 0
        while ready != 200 and time.monotonic() < deadline:
            ready = httpx.get(f"http://{LOCAL.loopback_host}:{pod.port}{API.ready_path}", timeout=10).status_code
            time.sleep(0.2)
        kinesis.put_record(StreamName=input_stream, Data=json.dumps(event).encode(), PartitionKey="order-1")
        deadline, predictions = time.monotonic() + 60, []
        while not predictions and time.monotonic() < deadline:
            predictions = read_stream_json(kinesis, output_stream)
            time.sleep(0.5)
        stopped = pod.stop()
        yield StreamRun(get_live_model(production_bucket, client=s3_client), event, predictions, ready,
                        stopped, pod.left_running())


def test_stream_stage_run_by_bodywork_turns_an_event_into_the_services_prediction(stream_run: StreamRun) -> None:
    estimate = stream_run.model.estimate_one("SKU001", 112)
    assert stream_run.ready == 200
    assert stream_run.predictions == [{
        **stream_run.event,
        "est_hours_to_dispatch": pytest.approx(estimate.est_hours_to_dispatch),
        "model_version": str(stream_run.model),
        "upper_hours_to_dispatch": pytest.approx(estimate.upper_hours_to_dispatch),
        "extrapolated": estimate.extrapolated,
        "artefact_id": stream_run.model.artefact_id,
    }], stream_run.stage.tail()


def test_stream_stage_run_by_bodywork_stops_cleanly_on_sigterm(stream_run: StreamRun) -> None:
    assert stream_run.stage.exit_code == 0, stream_run.stage.tail()
    assert not stream_run.left_running
