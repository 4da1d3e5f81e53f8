"""End to end on a real Kubernetes: Bodywork's own CLI deploys the pipeline to the single-node
cluster tests/cluster/cluster.sh builds on this machine, with the commands of
docs/deployment.md. The tests run in order and build on each other: the first deployment, its
train job and service, a prediction, a second deployment rolling the service under load, and
the weekly cronjob.
"""
import json
import random
import string
import subprocess
import threading
import time
import urllib.request
from datetime import datetime, timezone
from typing import Any, Dict, List, Tuple

import boto3
import pytest
import yaml

from pipeline.settings import API, ENVIRONMENT, LAYOUT, LOCAL
from pipeline.storage.client import s3_client
from tests.cluster.conftest import (
    BODYWORK_NAMESPACE, PIPELINE_NAMESPACE, WEEKS_BEFORE_FIRST_DEPLOYMENT, ClusterRun, add_week,
    documented_command, documented_secret_commands, signing_key_secret, stream_names,
)
from tests.helpers import free_port, read_stream_json

SERVICE = "serve-model"
REQUEST = {"product_code": "SKU001", "orders_placed": 112}
SIGNING_KEY = "cluster-test:" + "0123456789abcdef" * 4  # KEY_ID:SECRET, as docs/deployment.md makes it
ROLLOUT_TIMEOUT = 600


def post(url: str, timeout: float = 10) -> Tuple[int, Dict[str, Any]]:
    """POST the test request to `url`, bypassing any proxy; the status and the JSON body."""
    request = urllib.request.Request(url, data=json.dumps(REQUEST).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=timeout) as response:
        return response.status, json.loads(response.read())


def model_keys(bucket: str) -> List[str]:
    listed = s3_client().list_objects_v2(Bucket=bucket, Prefix=LAYOUT.models_prefix)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def service_pods(run: ClusterRun) -> List[Dict[str, Any]]:
    pods = json.loads(run.kubectl("-n", PIPELINE_NAMESPACE, "get", "pods", "-o", "json"))["items"]
    return [p for p in pods if p["metadata"]["name"].startswith(SERVICE + "-")]


def ready_addresses(run: ClusterRun) -> List[str]:
    """The pod addresses the service routes to now (its endpoints' ready addresses)."""
    endpoints = json.loads(run.kubectl("-n", PIPELINE_NAMESPACE, "get", "endpoints", SERVICE, "-o", "json"))
    return [a["ip"] for subset in endpoints.get("subsets") or [] for a in subset.get("addresses") or []]


def wait_for(what: str, check: Any, timeout: float, run: ClusterRun) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n{run.diagnostics()}")


def test_configure_cluster_creates_bodyworks_namespace(run: ClusterRun) -> None:
    done = run.bodywork(*documented_command(("configure-cluster",), {})[1:])
    assert done.returncode == 0, done.stdout + done.stderr
    namespace = run.kubectl("get", "namespace", BODYWORK_NAMESPACE, "-o", "name").strip()
    assert namespace == f"namespace/{BODYWORK_NAMESPACE}"


def test_documented_secrets_and_the_signing_key_are_created_in_the_prod_group(run: ClusterRun) -> None:
    config = yaml.safe_load((run.work_tree / "bodywork.yaml").read_text())
    group = config["pipeline"]["secrets_group"]
    variables = {k: run.env[k] for k in (
        ENVIRONMENT.aws_access_key_id, ENVIRONMENT.aws_secret_access_key, ENVIRONMENT.aws_default_region)}
    variables[ENVIRONMENT.signing_key] = SIGNING_KEY
    commands = [[string.Template(w).substitute(variables) for w in c] for c in documented_secret_commands()]
    aws = [c for c in commands if any(w.startswith("AWS_ACCESS_KEY_ID=") for w in c)]
    assert len(aws) == 1, f"docs/deployment.md should create the AWS secret once: {commands}"
    # The one addition on this machine: the S3 server's endpoint, which production does not set.
    aws[0] += ["--data", f"{ENVIRONMENT.aws_endpoint_url}={run.env[ENVIRONMENT.aws_endpoint_url]}"]
    if not any(any(w.startswith("MODEL_SIGNING_KEY=") for w in c) for c in commands):
        commands.append(["bodywork", "create", "secret", signing_key_secret(config), "--group", group,
                         "--data", f"MODEL_SIGNING_KEY={SIGNING_KEY}"])
    for command in commands:
        done = run.bodywork(*command[1:])
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
    names = run.kubectl("-n", BODYWORK_NAMESPACE, "get", "secrets", "-l", f"group={group}",
                        "-o", "jsonpath={.items[*].metadata.name}").split()
    assert sorted(names) == sorted(f"{group}-{c[3]}" for c in commands)


def test_first_deployment_succeeds(run: ClusterRun) -> None:
    deployment = run.deploy("the first deployment")
    assert deployment.returncode == 0 and "Deployment successful" in deployment.output, (
        f"{deployment.output[-8000:]}\n{run.diagnostics()}")


def test_train_job_ran_train_model_in_a_pod_and_a_model_landed_in_s3(run: ClusterRun) -> None:
    output = run.deployments[0].output
    # Bodywork replays the job pod's log when the job ends.
    assert "persisted model" in output and "Successfully ran stage = train_model" in output, output[-8000:]
    assert len(model_keys(run.bucket)) == 1


def test_service_pods_became_ready_only_after_loading_the_model(run: ClusterRun) -> None:
    pods = [p for p in service_pods(run) if p["metadata"].get("deletionTimestamp") is None]
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
    for pod in pods:
        name = pod["metadata"]["name"]
        ready = [c for c in pod["status"]["conditions"] if c["type"] == "Ready"][0]
        assert ready["status"] == "True", (name, ready)
        ready_at = datetime.fromisoformat(ready["lastTransitionTime"].replace("Z", "+00:00"))
        logs = run.kubectl("-n", PIPELINE_NAMESPACE, "logs", name, "--timestamps")
        loaded = [line for line in logs.splitlines() if "loaded model artefact" in line]
        assert loaded, f"{name} never logged loading a model:\n{logs[-4000:]}"
        stamp = loaded[0].split(" ", 1)[0]
        loaded_at = datetime.fromisoformat(stamp[:19]).replace(tzinfo=timezone.utc)
        # Kubernetes records the Ready transition to the second: it is not before the load.
        assert ready_at >= loaded_at, (name, ready_at, loaded_at)


def test_prediction_through_kubectl_port_forward_answers_200(run: ClusterRun) -> None:
    port = free_port()
    forward = subprocess.Popen(
        [run.kubectl_path, "-n", PIPELINE_NAMESPACE, "port-forward", f"svc/{SERVICE}", f"{port}:8000"],
        env=run.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, answer = time.monotonic() + 60, None
        while answer is None and time.monotonic() < deadline:
            try:
                answer = post(f"http://{LOCAL.loopback_host}:{port}{API.predict_path}")
            except OSError:
                time.sleep(0.5)
    finally:
        forward.terminate()
        forward.wait(timeout=10)
    assert answer is not None, f"no answer through port-forward: {forward.stdout.read() if forward.stdout else ''}"
    status, body = answer
    assert status == 200 and body["est_hours_to_dispatch"] > 0, body
    run.rest_answer = body


def test_stream_consumer_turns_an_order_event_into_the_services_prediction(run: ClusterRun) -> None:
    config = yaml.safe_load((run.work_tree / "bodywork.yaml").read_text())
    streams = stream_names(config)
    order_id = f"cluster-{time.time_ns()}"
    event = {"order_id": order_id, **REQUEST}
    boto3.client("kinesis").put_record(StreamName=streams["--input-stream"], Data=json.dumps(event).encode(),
                                       PartitionKey=order_id)

    def prediction() -> List[Dict[str, Any]]:
        written = read_stream_json(boto3.client("kinesis"), streams["--output-stream"])
        return [r for r in written if r.get("order_id") == order_id]

    (found,) = wait_for(f"a prediction for {order_id} on {streams['--output-stream']}", prediction, 120, run)
    assert run.rest_answer is not None, "the port-forward test did not get the service's answer"
    assert {k: found[k] for k in run.rest_answer} == run.rest_answer
    (key,) = model_keys(run.bucket)
    assert found["artefact_id"] in key


def test_documented_get_deployments_lists_the_service(run: ClusterRun) -> None:
    done = run.bodywork(*documented_command(("get", "deployments"), {})[1:])
    assert done.returncode == 0 and SERVICE in done.stdout and run.repo_url in done.stdout, done.stdout + done.stderr


def test_documented_kubectl_logs_show_the_service_serving_the_model(run: ClusterRun) -> None:
    from tests.helpers import deployment_text

    line = [t for t in deployment_text().splitlines() if t.strip().startswith("kubectl") and " logs " in t]
    assert len(line) == 1, line
    args = line[0].split()[1:]
    assert "serving model" in run.kubectl(*args)


class Poller:
    """A client of the service throughout a rollout: it sends the test request over and over,
    each time to one of the service's ready endpoints as the cluster lists them at that moment
    (what kube-proxy does for a ClusterIP; this cluster runs none), and counts the failures."""

    def __init__(self, run: ClusterRun) -> None:
        self.run = run
        self.addresses: List[str] = ready_addresses(run)
        self.ok = 0
        self.failures: List[str] = []
        self.versions: List[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._refresh, daemon=True),
                         threading.Thread(target=self._poll, daemon=True)]

    def _refresh(self) -> None:
        while not self._stop.is_set():
            try:
                self.addresses = ready_addresses(self.run)
            except (AssertionError, subprocess.TimeoutExpired):
                pass
            self._stop.wait(0.3)

    def _poll(self) -> None:
        while not self._stop.is_set():
            addresses = list(self.addresses)
            if not addresses:
                self.failures.append("no ready endpoint")
            else:
                address = random.choice(addresses)
                try:
                    status, body = post(f"http://{address}:8000{API.predict_path}", timeout=10)
                    self.ok += 1
                    if not self.versions or self.versions[-1] != body["model_version"]:
                        self.versions.append(body["model_version"])
                except Exception as error:  # every failure counts, whatever it is
                    self.failures.append(f"{address}: {error!r}")
            self._stop.wait(0.05)

    def __enter__(self) -> "Poller":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


@pytest.fixture(scope="module")
def rollout(run: ClusterRun) -> Tuple[Poller, Any]:
    """A newer week arrives and a new commit is deployed while a client polls the service."""
    add_week(run.bucket, WEEKS_BEFORE_FIRST_DEPLOYMENT)
    old_pods = {p["metadata"]["name"] for p in service_pods(run)}
    with Poller(run) as poller:
        time.sleep(3)
        deployment = run.deploy("a newer commit")
        # Keep polling until every old pod is gone, so that their whole shutdown is covered.
        if deployment.returncode == 0:
            wait_for("the old service pods to go",
                     lambda: not old_pods & {p["metadata"]["name"] for p in service_pods(run)}, ROLLOUT_TIMEOUT, run)
            time.sleep(3)
    return poller, deployment


def test_second_deployment_succeeds_and_persists_a_newer_model(run: ClusterRun, rollout: Tuple[Poller, Any]) -> None:
    _, deployment = rollout
    assert deployment.returncode == 0 and "Deployment successful" in deployment.output, (
        f"{deployment.output[-8000:]}\n{run.diagnostics()}")
    assert len(model_keys(run.bucket)) == 2


def test_rollout_to_the_newer_model_fails_no_request(run: ClusterRun, rollout: Tuple[Poller, Any]) -> None:
    poller, _ = rollout
    total = poller.ok + len(poller.failures)
    assert poller.failures == [], f"{len(poller.failures)} of {total} requests failed: {poller.failures[:20]}"
    assert poller.ok > 50
    # Old and new pods serve side by side during the rolling update (and the old ones through
    # their drain period), so the answers may alternate; they start with the old model, end
    # with the new one, and come from no third.
    assert len(set(poller.versions)) == 2 and poller.versions[0] != poller.versions[-1], poller.versions


def test_documented_cronjob_is_created_with_the_documented_schedule(run: ClusterRun) -> None:
    command = documented_command(("create", "cronjob"), {"REPO_URL": run.repo_url})
    done = run.bodywork(*command[1:])
    assert done.returncode == 0, done.stdout + done.stderr
    name = command[command.index("--name") + 1]
    schedule = command[command.index("--schedule") + 1]
    cronjob = json.loads(run.kubectl("-n", BODYWORK_NAMESPACE, "get", "cronjob", name, "-o", "json"))
    assert (cronjob["apiVersion"], cronjob["spec"]["schedule"]) == ("batch/v1beta1", schedule)


def test_job_from_the_cronjob_retrains_and_redeploys(run: ClusterRun) -> None:
    command = documented_command(("create", "cronjob"), {"REPO_URL": run.repo_url})
    name = command[command.index("--name") + 1]
    add_week(run.bucket, WEEKS_BEFORE_FIRST_DEPLOYMENT + 1)
    models_before = len(model_keys(run.bucket))
    run.kubectl("-n", BODYWORK_NAMESPACE, "create", "job", f"--from=cronjob/{name}", f"{name}-now")

    def finished() -> str:
        conditions = json.loads(run.kubectl("-n", BODYWORK_NAMESPACE, "get", "job", f"{name}-now", "-o", "json")
                                )["status"].get("conditions") or []
        return next((c["type"] for c in conditions if c["status"] == "True"), "")

    outcome = wait_for(f"job {name}-now to finish", finished, ROLLOUT_TIMEOUT + 300, run)
    assert outcome == "Complete", run.diagnostics()
    assert len(model_keys(run.bucket)) == models_before + 1


def test_documented_cronjob_history_lists_the_run(run: ClusterRun) -> None:
    from tests.helpers import deployment_commands

    history = [c for c in deployment_commands() if c[1:3] == ["get", "cronjob"] and "--history" in c]
    assert len(history) == 1, history
    done = run.bodywork(*history[0][1:])
    assert done.returncode == 0 and "-now" in done.stdout, done.stdout + done.stderr
