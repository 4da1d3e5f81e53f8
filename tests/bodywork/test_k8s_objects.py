"""The Kubernetes objects Bodywork would create for our stages, built by Bodywork's own code.

The objects are made exactly as Bodywork's workflow controller makes them during a deployment
(`bodywork.workflow_execution._run_batch_stages` and `_run_service_stages`): the stage's
settings from bodywork.yaml as Bodywork parsed them, the AWS variables from
`configure_env_vars_from_secrets`, and the git commit as an environment variable. They are
then checked against the Kubernetes API's JSON schemas (strict: no unknown fields) for 1.22,
the API of the Kubernetes client Bodywork pins, and 1.31, the newest the validator ships.

`configure_env_vars_from_secrets` asks the cluster's API server which secrets the namespace
holds. Here a small HTTP server on 127.0.0.1 answers that one request with the secret the
`bodywork create secret` command of docs/deployment.md makes, as Bodywork copies it into the namespace.

The Kubernetes objects and the Prometheus configuration that Bodywork does not make are files
under deploy/ (the docs link to them and apply them), read here:

- deploy/kubernetes/cronjob-v1.yaml, the weekly retraining as a batch/v1 CronJob for Kubernetes
  1.25 and later: valid for 1.31, and Bodywork's own CronJob for the `bodywork create cronjob`
  command of docs/deployment.md with only the API version and the image changed;
- deploy/kubernetes/batch-job.yaml: batch scoring is no Bodywork stage, so it is a plain Job,
  checked against the same schemas and against the train job Bodywork makes (image, namespace,
  secrets), and its resources against benchmarks/results/batch.json;
- deploy/kubernetes/servicemonitor.yaml and deploy/prometheus/scrape-config.yaml: they find the
  Service Bodywork creates for serve_model (docs/operations.md, "How Prometheus finds the pods").
"""
import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Iterator, List

import kubernetes_validate
import pytest
from bodywork import k8s
from bodywork.config import BatchStageConfig, BodyworkConfig, ServiceStageConfig
from bodywork.constants import (
    BODYWORK_NAMESPACE,
    GIT_COMMIT_HASH_K8S_ENV_VAR,
    K8S_PROBE_PERIOD_SECONDS,
    SECRET_GROUP_LABEL,
)
from kubernetes import client

from pipeline.settings import API, ENVIRONMENT, LOCAL
from tests.helpers import (
    BATCH_JOB,
    CRONJOB_V1,
    SCRAPE_CONFIG,
    SERVICEMONITOR,
    deploy_yaml,
    deployment_command,
    deployment_commands_starting,
    parse_with_bodywork_cli,
)

KUBERNETES_VERSIONS = ("1.22.0", "1.31.0")
# The last Kubernetes version serving batch/v1beta1 CronJobs, which Bodywork 3.0 creates.
LAST_VERSION_WITH_V1BETA1_CRONJOB = "1.24.0"
COMMIT = "0123abc"
# The cluster test's node, and the smallest the deployment is sized for (docs/decisions/0013).
NODE_CORES = 2.0
AWS_VARIABLES = [ENVIRONMENT.aws_access_key_id, ENVIRONMENT.aws_secret_access_key, ENVIRONMENT.aws_default_region]
# What each stage's container reads from secrets: name -> (secret, key).
SECRET_ENV = {
    **{name: ("aws-credentials", name) for name in AWS_VARIABLES},
    ENVIRONMENT.signing_key: ("model-signing", ENVIRONMENT.signing_key),
}


class _SecretsApi(BaseHTTPRequestHandler):
    """Answers `GET /api/v1/namespaces/NAMESPACE/secrets` with `secrets[NAMESPACE]`, and keeps the
    body of every `POST /api/v1/namespaces/NAMESPACE/services` in `services`."""

    secrets: Dict[str, List[Dict[str, Any]]] = {}
    services: List[Dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
        parts = self.path.split("?")[0].strip("/").split("/")
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "services":
            self.services.append(body)
            self._reply(201, body)
        else:
            self._reply(404, {"apiVersion": "v1", "kind": "Status", "status": "Failure",
                              "reason": "NotFound", "code": 404})

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "secrets":
            body = {"apiVersion": "v1", "kind": "SecretList", "metadata": {},
                    "items": self.secrets.get(parts[3], [])}
            self._reply(200, body)
        else:
            self._reply(404, {"apiVersion": "v1", "kind": "Status", "status": "Failure",
                              "reason": "NotFound", "code": 404})

    def _reply(self, status: int, body: Dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def cluster_api(bodywork_config: BodyworkConfig) -> Iterator[str]:
    """The Kubernetes client pointed at a loopback API holding the deployment's AWS secret."""
    secrets = [parse_with_bodywork_cli(command)[1] for command in deployment_commands_starting("create", "secret")]
    _SecretsApi.secrets = {
        bodywork_config.pipeline.namespace: [{
            "metadata": {
                "name": secret["name"],
                "namespace": bodywork_config.pipeline.namespace,
                "labels": {SECRET_GROUP_LABEL: secret["group"]},
            },
            "type": "Opaque",
            "data": {
                item.split("=", 1)[0]: base64.b64encode(b"not-a-real-value").decode() for item in secret["data"]
            },
        } for secret in secrets]
    }
    server = ThreadingHTTPServer((LOCAL.loopback_host, 0), _SecretsApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    configuration = client.Configuration()
    configuration.host = f"http://{LOCAL.loopback_host}:{server.server_address[1]}"
    client.Configuration.set_default(configuration)
    try:
        yield configuration.host
    finally:
        client.Configuration.set_default(client.Configuration())
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def deployment_args() -> Dict[str, Any]:
    """The `bodywork create deployment` command of docs/deployment.md as Bodywork's CLI parses it."""
    _, params = parse_with_bodywork_cli(deployment_command("create", "deployment"))
    return params


def env_vars(stage: Any, namespace: str) -> List[client.V1EnvVar]:
    """A stage container's environment, made as Bodywork's workflow controller makes it."""
    return k8s.configure_env_vars_from_secrets(namespace, stage.env_vars_from_secrets) + (
        k8s.create_k8s_environment_variables([(GIT_COMMIT_HASH_K8S_ENV_VAR, COMMIT)])
    )


@pytest.fixture(scope="module")
def train_job(
    cluster_api: str, bodywork_config: BodyworkConfig, deployment_args: Dict[str, Any]
) -> Dict[str, Any]:
    """The batch job for train_model, as the JSON Bodywork would send to the cluster."""
    stage = bodywork_config.stages["train_model"]
    assert isinstance(stage, BatchStageConfig)
    namespace = bodywork_config.pipeline.namespace
    job = k8s.configure_batch_stage_job(
        namespace,
        stage.name,
        deployment_args["git_url"],
        deployment_args["git_branch"],
        retries=stage.retries,
        timeout=stage.max_completion_time,
        container_env_vars=env_vars(stage, namespace),
        image=bodywork_config.pipeline.docker_image,
        cpu_request=stage.cpu_request,
        memory_request=stage.memory_request,
    )
    # BatchV1Api.create_namespaced_job sends it to batch/v1's jobs.
    return {"apiVersion": "batch/v1", "kind": "Job", **client.ApiClient().sanitize_for_serialization(job)}


def service_stage_deployment(
    stage_name: str, bodywork_config: BodyworkConfig, deployment_args: Dict[str, Any]
) -> client.V1Deployment:
    """The deployment for a service stage, as Bodywork's workflow controller builds it."""
    stage = bodywork_config.stages[stage_name]
    assert isinstance(stage, ServiceStageConfig)
    namespace = bodywork_config.pipeline.namespace
    return k8s.configure_service_stage_deployment(
        namespace,
        stage.name,
        bodywork_config.pipeline.name,
        deployment_args["git_url"],
        COMMIT,
        deployment_args["git_branch"],
        replicas=stage.replicas,
        port=stage.port,
        container_env_vars=env_vars(stage, namespace),
        image=bodywork_config.pipeline.docker_image,
        cpu_request=stage.cpu_request,
        memory_request=stage.memory_request,
        startup_time_seconds=stage.max_startup_time,
    )


def as_sent(deployment: client.V1Deployment) -> Dict[str, Any]:
    """A deployment as the JSON Bodywork would send to the cluster."""
    # AppsV1Api.create_namespaced_deployment sends it to apps/v1's deployments.
    return {"apiVersion": "apps/v1", "kind": "Deployment", **client.ApiClient().sanitize_for_serialization(deployment)}


@pytest.fixture(scope="module")
def serve_deployment_object(
    cluster_api: str, bodywork_config: BodyworkConfig, deployment_args: Dict[str, Any]
) -> client.V1Deployment:
    """The deployment for serve_model, as Bodywork's workflow controller builds it."""
    return service_stage_deployment("serve_model", bodywork_config, deployment_args)


@pytest.fixture(scope="module")
def serve_deployment(serve_deployment_object: client.V1Deployment) -> Dict[str, Any]:
    """The deployment for serve_model, as the JSON Bodywork would send to the cluster."""
    return as_sent(serve_deployment_object)


@pytest.fixture(scope="module")
def stream_deployment(
    cluster_api: str, bodywork_config: BodyworkConfig, deployment_args: Dict[str, Any]
) -> Dict[str, Any]:
    """The deployment for stream_predict, the stream consumer, as Bodywork would send it."""
    return as_sent(service_stage_deployment("stream_predict", bodywork_config, deployment_args))


@pytest.fixture(scope="module")
def serve_service(serve_deployment_object: client.V1Deployment) -> Dict[str, Any]:
    """The Service Bodywork creates for serve_model, as it sends it to the (loopback) cluster."""
    _SecretsApi.services.clear()
    k8s.expose_deployment_as_cluster_service(serve_deployment_object)
    (service,) = _SecretsApi.services
    return service


@pytest.fixture(scope="module")
def weekly_cronjob() -> Dict[str, Any]:
    """The cronjob the `bodywork create cronjob` command of docs/deployment.md makes, built as the CLI does."""
    _, params = parse_with_bodywork_cli(deployment_command("create", "cronjob"))
    cronjob = k8s.configure_workflow_cronjob(
        params["schedule"],
        BODYWORK_NAMESPACE,
        k8s.make_valid_k8s_name(params["name"]),
        params["git_url"],
        params["git_branch"] or "master",
        params["retries"],
        params["history_limit"],
        params["history_limit"],
        env_vars=None,  # no --ssh / --group: the repository is cloned over HTTPS
    )
    # BatchV1beta1Api.create_namespaced_cron_job sends it to batch/v1beta1's cronjobs.
    return {
        "apiVersion": "batch/v1beta1", "kind": "CronJob",
        **client.ApiClient().sanitize_for_serialization(cronjob),
    }


def container(obj: Dict[str, Any]) -> Dict[str, Any]:
    """The one container of a job's or a deployment's pod template."""
    (only,) = obj["spec"]["template"]["spec"]["containers"]
    return dict(only)


def secret_env(obj: Dict[str, Any]) -> Dict[str, Any]:
    """The container's variables that come from secrets: name -> (secret, key)."""
    return {
        var["name"]: (var["valueFrom"]["secretKeyRef"]["name"], var["valueFrom"]["secretKeyRef"]["key"])
        for var in container(obj).get("env", [])
        if "valueFrom" in var
    }


# --- train_model: the batch job ----------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_train_job_is_valid_for_kubernetes(train_job: Dict[str, Any], version: str) -> None:
    assert kubernetes_validate.validate(train_job, version, strict=True) == version.rsplit(".", 1)[0]


def test_train_job_runs_the_stage_with_its_time_limit(
    train_job: Dict[str, Any], bodywork_config: BodyworkConfig, deployment_args: Dict[str, Any]
) -> None:
    stage = bodywork_config.stages["train_model"]
    assert isinstance(stage, BatchStageConfig)
    assert container(train_job)["command"] == ["bodywork", "stage"]
    assert container(train_job)["args"] == [
        deployment_args["git_url"], "train_model", "--branch=master", str(stage.max_completion_time)
    ]


def test_train_job_retries_as_configured(train_job: Dict[str, Any]) -> None:
    assert train_job["spec"]["backoffLimit"] == 2


def requests_in_config(bodywork_config: BodyworkConfig, stage_name: str) -> Dict[str, Any]:
    """A stage's cpu_request and memory_request_mb as Kubernetes quantities (MB are 10^6 bytes)."""
    stage = bodywork_config.stages[stage_name]
    return {"requests": {"cpu": str(stage.cpu_request), "memory": f"{stage.memory_request}M"}}


def test_train_job_requests_the_configured_resources(
    train_job: Dict[str, Any], bodywork_config: BodyworkConfig
) -> None:
    assert container(train_job)["resources"] == requests_in_config(bodywork_config, "train_model")


def test_train_job_gets_the_aws_credentials_and_the_signing_key_from_secrets(train_job: Dict[str, Any]) -> None:
    assert secret_env(train_job) == SECRET_ENV


def test_train_job_runs_in_the_configured_image(train_job: Dict[str, Any], bodywork_config: BodyworkConfig) -> None:
    assert container(train_job)["image"] == bodywork_config.pipeline.docker_image


# --- serve_model: the service deployment -------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_serve_deployment_is_valid_for_kubernetes(serve_deployment: Dict[str, Any], version: str) -> None:
    result = kubernetes_validate.validate(serve_deployment, version, strict=True)
    assert result == version.rsplit(".", 1)[0]


def test_serve_deployment_has_two_replicas(serve_deployment: Dict[str, Any]) -> None:
    assert serve_deployment["spec"]["replicas"] == 2


def test_serve_deployment_probes_port_8000_over_tcp(serve_deployment: Dict[str, Any]) -> None:
    probes = {name: container(serve_deployment)[name] for name in ("startupProbe", "livenessProbe")}
    assert {name: probe["tcpSocket"] for name, probe in probes.items()} == {
        "startupProbe": {"port": 8000}, "livenessProbe": {"port": 8000}
    }
    assert serve_deployment["metadata"]["annotations"]["port"] == "8000"


def test_serve_deployment_startup_probe_waits_the_configured_startup_time(
    serve_deployment: Dict[str, Any], bodywork_config: BodyworkConfig
) -> None:
    stage = bodywork_config.stages["serve_model"]
    assert isinstance(stage, ServiceStageConfig)
    probe = container(serve_deployment)["startupProbe"]
    assert probe["periodSeconds"] == K8S_PROBE_PERIOD_SECONDS
    assert probe["periodSeconds"] * probe["failureThreshold"] >= stage.max_startup_time


def test_serve_deployment_rolls_out_without_unavailable_pods(serve_deployment: Dict[str, Any]) -> None:
    assert serve_deployment["spec"]["strategy"] == {"rollingUpdate": {"maxSurge": 2, "maxUnavailable": 0}}


def test_serve_deployment_requests_the_configured_resources(
    serve_deployment: Dict[str, Any], bodywork_config: BodyworkConfig
) -> None:
    assert container(serve_deployment)["resources"] == requests_in_config(bodywork_config, "serve_model")


def test_serve_deployment_gets_the_aws_credentials_and_the_signing_key_from_secrets(
    serve_deployment: Dict[str, Any],
) -> None:
    assert secret_env(serve_deployment) == SECRET_ENV


def test_serve_deployment_runs_the_service_stage(
    serve_deployment: Dict[str, Any], deployment_args: Dict[str, Any]
) -> None:
    assert container(serve_deployment)["command"] == ["bodywork", "stage"]
    assert container(serve_deployment)["args"] == [deployment_args["git_url"], "serve_model", "--branch=master"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_stream_deployment_is_valid_for_kubernetes(stream_deployment: Dict[str, Any], version: str) -> None:
    result = kubernetes_validate.validate(stream_deployment, version, strict=True)
    assert result == version.rsplit(".", 1)[0]


def test_stream_deployment_is_one_replica_probed_on_port_8001(stream_deployment: Dict[str, Any]) -> None:
    assert stream_deployment["spec"]["replicas"] == 1
    probes = {name: container(stream_deployment)[name] for name in ("startupProbe", "livenessProbe")}
    assert {name: probe["tcpSocket"] for name, probe in probes.items()} == {
        "startupProbe": {"port": 8001}, "livenessProbe": {"port": 8001}
    }


def test_stream_deployment_requests_the_configured_resources_and_secrets(
    stream_deployment: Dict[str, Any], bodywork_config: BodyworkConfig
) -> None:
    assert container(stream_deployment)["resources"] == requests_in_config(bodywork_config, "stream_predict")
    assert secret_env(stream_deployment) == SECRET_ENV


def test_stream_deployment_runs_the_stream_stage(
    stream_deployment: Dict[str, Any], deployment_args: Dict[str, Any]
) -> None:
    assert container(stream_deployment)["command"] == ["bodywork", "stage"]
    assert container(stream_deployment)["args"] == [deployment_args["git_url"], "stream_predict", "--branch=master"]


def test_requests_fit_a_two_core_node_during_the_retrain_and_during_a_rollout(
    bodywork_config: BodyworkConfig, serve_deployment: Dict[str, Any], stream_deployment: Dict[str, Any]
) -> None:
    """The weekly retrain runs beside the running service and consumer; a rollout runs the old
    and the new pods (maxSurge) side by side. A job that cannot be scheduled fails the deployment
    (docs/decisions/0013)."""
    stages = bodywork_config.stages
    serve = stages["serve_model"].cpu_request * serve_deployment["spec"]["replicas"]
    stream = stages["stream_predict"].cpu_request * stream_deployment["spec"]["replicas"]
    # A rollout adds at most maxSurge new pods, and never more than the replicas it replaces.
    surge = sum(stages[name].cpu_request * min(spec["strategy"]["rollingUpdate"]["maxSurge"], spec["replicas"])
                for name, spec in (("serve_model", serve_deployment["spec"]),
                                   ("stream_predict", stream_deployment["spec"])))
    assert stages["train_model"].cpu_request + serve + stream <= NODE_CORES + 1e-9
    assert serve + stream + surge <= NODE_CORES + 1e-9


# --- the weekly cronjob ------------------------------------------------------------------

def test_weekly_cronjob_is_valid_for_kubernetes_1_24(weekly_cronjob: Dict[str, Any]) -> None:
    assert kubernetes_validate.validate(weekly_cronjob, LAST_VERSION_WITH_V1BETA1_CRONJOB, strict=True) == "1.24"


def test_weekly_cronjob_api_is_gone_from_kubernetes_1_25(weekly_cronjob: Dict[str, Any]) -> None:
    """Bodywork 3.0 makes batch/v1beta1 CronJobs, which Kubernetes 1.25 stopped serving
    (docs/deployment.md, "5. Schedule the weekly retraining", gives the cronjob for newer clusters)."""
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(weekly_cronjob, "1.25.0", strict=True)


def test_weekly_cronjob_runs_the_documented_schedule_with_retries(weekly_cronjob: Dict[str, Any]) -> None:
    _, params = parse_with_bodywork_cli(deployment_command("create", "cronjob"))
    assert weekly_cronjob["spec"]["schedule"] == params["schedule"]
    assert weekly_cronjob["spec"]["jobTemplate"]["spec"]["backoffLimit"] == params["retries"]


def test_deploy_batch_v1_cronjob_is_valid_for_kubernetes_1_31() -> None:
    assert kubernetes_validate.validate(deploy_yaml(CRONJOB_V1), "1.31.0", strict=True) == "1.31"


def test_deploy_batch_v1_cronjob_is_bodyworks_cronjob_with_the_api_version_changed(
    weekly_cronjob: Dict[str, Any], bodywork_config: BodyworkConfig
) -> None:
    """deploy/kubernetes/cronjob-v1.yaml is the cronjob of docs/deployment.md's `bodywork create
    cronjob` command (its schedule, retries, branch and `$REPO_URL`, which the docs fill in when
    they apply the file), with only two differences: batch/v1 instead of batch/v1beta1, and the
    stages' image instead of the `latest` that Bodywork's CLI gives the cronjob."""
    expected = json.loads(json.dumps(weekly_cronjob))
    expected["apiVersion"] = "batch/v1"
    pod = expected["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    pod["containers"][0]["image"] = bodywork_config.pipeline.docker_image
    assert deploy_yaml(CRONJOB_V1) == expected


# --- score_batch: the Kubernetes Job of deploy/kubernetes/batch-job.yaml -------------------

BATCH_BENCHMARK = LOCAL.repo_root / "benchmarks" / "results" / "batch.json"


@pytest.fixture(scope="module")
def batch_job() -> Dict[str, Any]:
    """The Job of deploy/kubernetes/batch-job.yaml, which docs/batch-scoring.md applies."""
    return deploy_yaml(BATCH_JOB)


def batch_job_script(batch_job: Dict[str, Any]) -> List[str]:
    """The shell commands the Job's container runs, split at `&&`."""
    spec = container(batch_job)
    assert spec["command"] == ["/bin/sh", "-c"]
    (script,) = spec["args"]
    return [part.strip() for part in script.split("&&")]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_batch_job_is_valid_for_kubernetes(batch_job: Dict[str, Any], version: str) -> None:
    assert kubernetes_validate.validate(batch_job, version, strict=True) == version.rsplit(".", 1)[0]


def test_batch_job_runs_in_the_stages_image_and_namespace(
    batch_job: Dict[str, Any], bodywork_config: BodyworkConfig
) -> None:
    assert container(batch_job)["image"] == bodywork_config.pipeline.docker_image
    assert batch_job["metadata"]["namespace"] == bodywork_config.pipeline.namespace


def test_batch_job_gets_the_aws_credentials_as_the_train_job_does(
    batch_job: Dict[str, Any], train_job: Dict[str, Any]
) -> None:
    assert secret_env(batch_job) == secret_env(train_job)


def test_batch_job_installs_the_pinned_requirements_and_runs_the_cli_with_valid_arguments(
    batch_job: Dict[str, Any]
) -> None:
    from pipeline.batch.jobs import parse_args

    clone, cd, install, run = batch_job_script(batch_job)
    assert clone.startswith("git clone") and '"$REPO_URL"' in clone and "--branch master" in clone
    assert install == "pip install --quiet -r requirements_pipe.txt"
    words = run.split()
    assert words[:4] == ["exec", "python", "-m", "pipeline.score_batch"]
    assert parse_args(words[4:]).bucket == "time-to-dispatch"


def test_batch_job_memory_request_covers_the_peak_rss_of_ten_million_rows(batch_job: Dict[str, Any]) -> None:
    runs = json.loads(BATCH_BENCHMARK.read_text())["runs"]
    peak_mib = max(run["peak_rss_mib"] for run in runs if run["rows"] >= 10_000_000)
    request = container(batch_job)["resources"]["requests"]["memory"]
    assert request.endswith("M")
    assert int(request[:-1]) * 10**6 >= 1.5 * peak_mib * 2**20


def test_batch_job_deadline_covers_ten_million_rows_three_times(batch_job: Dict[str, Any]) -> None:
    runs = json.loads(BATCH_BENCHMARK.read_text())["runs"]
    seconds = max(run["seconds"] for run in runs if run["rows"] >= 10_000_000)
    assert batch_job["spec"]["activeDeadlineSeconds"] >= 3 * seconds


# --- serve_model: the Service, and how Prometheus finds the pods (deploy/) -----------------

def test_serve_service_has_one_unnamed_port_8000_and_selects_the_serve_pods(
    serve_service: Dict[str, Any], serve_deployment: Dict[str, Any]
) -> None:
    assert serve_service["metadata"]["name"] == "serve-model"
    assert [{k: v for k, v in port.items() if k != "protocol"} for port in serve_service["spec"]["ports"]] == [
        {"port": 8000, "targetPort": 8000}]
    pod_labels = serve_deployment["spec"]["template"]["metadata"]["labels"]
    assert serve_service["spec"]["selector"].items() <= pod_labels.items()


def test_deploy_servicemonitor_selects_the_serve_service(serve_service: Dict[str, Any]) -> None:
    monitor = deploy_yaml(SERVICEMONITOR)
    spec = monitor["spec"]

    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    assert serve_service["metadata"]["namespace"] in spec["namespaceSelector"]["matchNames"]
    assert spec["selector"]["matchLabels"].items() <= serve_service["metadata"]["labels"].items()
    # The port has no name and the pods declare none: naming a port would match no target.
    assert [set(endpoint) & {"port", "targetPort"} for endpoint in spec["endpoints"]] == [set()]
    assert spec["endpoints"][0]["path"] == API.metrics_path


def test_deploy_scrape_job_keeps_the_serve_service(serve_service: Dict[str, Any]) -> None:
    (job,) = deploy_yaml(SCRAPE_CONFIG)["scrape_configs"]
    (discovery,) = job["kubernetes_sd_configs"]
    keep = [rule for rule in job["relabel_configs"] if rule.get("action") == "keep"]

    assert discovery["role"] == "endpoints"
    assert job["metrics_path"] == API.metrics_path
    assert serve_service["metadata"]["namespace"] in discovery["namespaces"]["names"]
    assert [rule["source_labels"] for rule in keep] == [["__meta_kubernetes_service_name"]]
    assert re.fullmatch(keep[0]["regex"], serve_service["metadata"]["name"])
