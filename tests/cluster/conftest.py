"""Fixtures of the cluster test (the `cluster` tox environment): a real single-node Kubernetes
on this machine, the servers its pods reach, the stage image in its registry, and the
pipeline deployed by Bodywork's own CLI.

Everything the pods reach listens on the bridge address GATEWAY, which cluster.sh creates:
the S3 server (moto), the git server the stages clone from, and the Docker Hub stand-in.
Nothing reaches any other host. The cluster is brought down when the session ends, whatever
happened (TTD_CLUSTER_KEEP=1 keeps it up, to look around after a failure).
"""
import os
import shutil
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Optional

import boto3
import pytest
import yaml

from pipeline.local.local_s3 import LocalS3, create_bucket
from pipeline.local.synthetic import generate_orders, generate_weeks
from pipeline.settings import ENVIRONMENT, LOCAL
from pipeline.storage.client import s3_client
from pipeline.storage.datasets import put_dataset
from tests.cluster.servers import DockerHubProxy, GitServer, make_certificates, publish
from tests.helpers import TEST_WEEK_SEED, copy_working_tree, machine_state

HERE = Path(__file__).resolve().parent
CLUSTER_SH = HERE / "cluster.sh"
IMAGE_SH = HERE / "image.sh"
GATEWAY = os.environ.get("TTD_K8S_GATEWAY", "10.244.0.1")
REGISTRY = os.environ.get("TTD_K8S_REGISTRY", "127.0.0.1:5000")
# cluster.sh's state folder, as .ci/machine-state.sh defines it (TTD_K8S_STATE moves it).
STATE = Path(machine_state()["TTD_K8S_STATE"])
GIT_PORT, PROXY_PORT = 8443, 8444
# The no-proxy variable's names lower-cased: the proxy variables are matched whatever their case.
NO_PROXY_NAMES = {name.lower() for name in ENVIRONMENT.no_proxy_variables}
# The branch docs/deployment.md deploys; the served repository has only this one.
BRANCH = "master"
PIPELINE_NAMESPACE = "pipelines"
BODYWORK_NAMESPACE = "bodywork-deployment-jobs"
WEEKS_BEFORE_FIRST_DEPLOYMENT = 2
SIGNING_KEY_SECRET = "model-signing-key"
STREAM_SHARDS = 2
# Generous bounds for a loaded 2-core machine; each wait fails with what it waited for.
UP_TIMEOUT = 45 * 60  # includes the first build of Kubernetes (about 10 minutes when idle)
IMAGE_TIMEOUT = 30 * 60
DEPLOY_TIMEOUT = 15 * 60


class Deployment(NamedTuple):
    """One `bodywork create deployment` run: its exit code, output and the commit deployed."""

    returncode: int
    output: str
    commit: str


class ClusterRun:
    """What the tests share: how to run kubectl and the Bodywork CLI against the cluster, the
    S3 bucket, the served repository, and the deployments made so far."""

    def __init__(self, env: Dict[str, str], work: Path, repo_url: str, bucket: str,
                 work_tree: Path, bare: Path) -> None:
        self.env = env
        self.work = work
        self.repo_url = repo_url
        self.bucket = bucket
        self.work_tree = work_tree
        self.bare = bare
        self.deployments: List[Deployment] = []
        # What the service answered for tests.cluster.test_cluster.REQUEST, once a test has asked.
        self.rest_answer: Optional[Dict[str, Any]] = None
        self.kubectl_path = str(_cluster_bin() / "kubectl")

    def kubectl(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        done = subprocess.run([self.kubectl_path, *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done.stdout

    def bodywork(self, *args: str, timeout: float = 300) -> "subprocess.CompletedProcess[str]":
        """Bodywork's CLI, as installed in this environment, run in a scratch directory (its
        workflow controller clones into the working directory)."""
        return subprocess.run([bodywork_executable(), *args], env=self.env, cwd=self.work,
                              capture_output=True, text=True, timeout=timeout)

    def deploy(self, message: str) -> Deployment:
        """Publish the working tree as a new commit and deploy it with the documented command."""
        commit = publish(self.work_tree, self.bare, BRANCH, message)
        command = documented_command(("create", "deployment"), {"REPO_URL": self.repo_url})
        done = self.bodywork(*command[1:], timeout=DEPLOY_TIMEOUT)
        deployment = Deployment(done.returncode, done.stdout + done.stderr, commit)
        self.deployments.append(deployment)
        return deployment

    def diagnostics(self) -> str:
        """Pods, events and logs of the pipeline's namespaces, for a failure message."""
        parts = []
        for namespace in (PIPELINE_NAMESPACE, BODYWORK_NAMESPACE):
            for args in (("get", "all", "-o", "wide"), ("get", "events", "--sort-by=.lastTimestamp")):
                parts.append(f"$ kubectl -n {namespace} {' '.join(args)}\n"
                             + self.kubectl("-n", namespace, *args, check=False)[-6000:])
            for pod in self.kubectl("-n", namespace, "get", "pods", "-o", "name", check=False).split():
                parts.append(f"$ kubectl -n {namespace} logs {pod} --tail=40\n"
                             + self.kubectl("-n", namespace, "logs", pod, "--tail=40", check=False))
        return "\n".join(parts)


def bodywork_executable() -> str:
    found = shutil.which("bodywork", path=str(Path(sys.executable).parent)) or shutil.which("bodywork")
    assert found, "Bodywork's CLI is not installed: run this through `tox -e cluster`"
    return found


def documented_command(words: Any, variables: Dict[str, str]) -> List[str]:
    """The one `bodywork WORDS...` command of docs/deployment.md's deployment blocks, with the
    shell variables it names filled in."""
    from tests.helpers import deployment_command

    return [string.Template(word).substitute(variables) for word in deployment_command(*words)]


def documented_secret_commands() -> List[List[str]]:
    """Every `bodywork create secret` command of docs/deployment.md's deployment blocks."""
    from tests.helpers import deployment_commands

    return [c for c in deployment_commands() if c[1:3] == ["create", "secret"]]


def _cluster_bin() -> Path:
    cache = Path(machine_state()["TTD_K8S_CACHE"])
    return cache / os.environ.get("K8S_VERSION", "v1.20.2") / "bin"


def _run_logged(args: List[str], log: Path, timeout: float, what: str) -> str:
    """Run a script with its output in `log`; fail with the log's tail if it fails."""
    with log.open("a") as out:
        try:
            done = subprocess.run(args, stdout=subprocess.PIPE, stderr=out, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{what} took more than {timeout} s; the end of {log}:\n{_tail(log)}")
    if done.returncode != 0:
        pytest.fail(f"{what} exited {done.returncode}; the end of {log}:\n{_tail(log)}")
    return done.stdout


def _tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The cluster, up (built first if the cache lacks it); down again at the end. Yields the
    log file of cluster.sh. Needs root: without it the tests skip, except under CI, where a
    skip would hide that nothing was verified."""
    if os.geteuid() != 0:
        reason = "the cluster test needs root (it starts a kubelet, containerd and a bridge)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; under CI it must run")
        pytest.skip(reason)
    log = tmp_path_factory.mktemp("cluster") / "cluster.log"
    started = time.monotonic()
    try:
        _run_logged(["bash", str(CLUSTER_SH), "up"], log, UP_TIMEOUT, "cluster.sh up")
        print(f"cluster up in {time.monotonic() - started:.0f} s (log {log})")
        yield log
    finally:
        if os.environ.get("TTD_CLUSTER_KEEP") != "1":
            subprocess.run(["bash", str(CLUSTER_SH), "down"], stdout=log.open("a"), stderr=subprocess.STDOUT,
                           timeout=300, check=False)


@pytest.fixture(scope="session")
def run(cluster: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterRun]:
    """The servers on the bridge address, the image in the registry, the secrets created and
    the repository published, ready for the first deployment."""
    work = tmp_path_factory.mktemp("bodywork")
    certificates = make_certificates(STATE / "cluster-test-ca", GATEWAY)
    git = GitServer(work / "git", GATEWAY, GIT_PORT, certificates.git).start()
    hub = DockerHubProxy(GATEWAY, PROXY_PORT, certificates.hub, REGISTRY).start()
    s3 = LocalS3(host=GATEWAY).start()
    try:
        image = _run_logged(
            ["bash", str(IMAGE_SH), str(certificates.ca), git.url + "/", hub.url],
            cluster, IMAGE_TIMEOUT, "tests/cluster/image.sh",
        ).strip().splitlines()[-1]
        env = _cli_environment(cluster, s3, certificates.ca, hub.url, work)
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_") or k.lower() in NO_PROXY_NAMES})
        config = yaml.safe_load((LOCAL.repo_root / "bodywork.yaml").read_text())
        bucket = config["stages"]["train_model"]["args"][0]
        create_bucket(s3_client(), bucket)
        create_streams(config)
        for week in range(WEEKS_BEFORE_FIRST_DEPLOYMENT):
            add_week(bucket, week)
        work_tree = work / "tree"
        _copy_working_tree(work_tree, image)
        run = ClusterRun(env, work, f"{git.url}/time-to-dispatch.git", bucket, work_tree,
                         work / "git" / "time-to-dispatch.git")
        # The repository is there from the start, for the cronjob as much as for a deployment.
        publish(work_tree, run.bare, BRANCH, "the working tree under test")
        # The cluster's state outlives a run: start from no deployment at all.
        run.kubectl("delete", "namespace", "--ignore-not-found", "--wait=true", "--timeout=300s",
                    PIPELINE_NAMESPACE, BODYWORK_NAMESPACE, timeout=330)
        yield run
    finally:
        s3.stop()
        hub.stop()
        git.stop()


def _cli_environment(cluster_log: Path, s3: LocalS3, ca: Path, proxy_url: str, work: Path) -> Dict[str, str]:
    """What the Bodywork CLI and kubectl run with: the cluster's kubeconfig, the test CA for
    git (the git server) and requests (the Docker Hub stand-in), the stand-in as HTTPS proxy,
    the bridge and loopback addresses bypassing it, and the S3 server's AWS variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k.lower() not in (
        "https_proxy", "http_proxy", *NO_PROXY_NAMES, "requests_ca_bundle", "git_ssl_cainfo")}
    direct = f"{GATEWAY},{LOCAL.loopback_host},localhost"
    env.update({
        "KUBECONFIG": str(STATE / "kubeconfig"),
        "PATH": f"{_cluster_bin()}:{env.get('PATH', '')}",
        "HOME": str(work),
        "HTTPS_PROXY": proxy_url, "https_proxy": proxy_url,
        **{name: direct for name in ENVIRONMENT.no_proxy_variables},
        "REQUESTS_CA_BUNDLE": str(ca),
        "GIT_SSL_CAINFO": str(ca),
        **s3.environment(),
    })
    return env


def _copy_working_tree(target: Path, image: str) -> None:
    """The working tree as it is now (tracked and untracked files git does not ignore), with
    bodywork.yaml changed only where this machine differs from production: the stages' image
    is the one in the local registry, and each stage also gets AWS_ENDPOINT_URL from the AWS
    secret, so that boto3 talks to the S3 server on the bridge."""
    copy_working_tree(target)
    config_path = target / "bodywork.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["pipeline"]["docker_image"] = image
    for stage in config["stages"].values():
        secrets = stage.setdefault("secrets", {})
        secrets[ENVIRONMENT.aws_endpoint_url] = secrets[ENVIRONMENT.aws_access_key_id]
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def stream_names(config: Dict[str, Any]) -> Dict[str, str]:
    """The streams the stream_predict stage's args name: {"--input-stream": NAME, "--output-stream": NAME}."""
    args = config["stages"]["stream_predict"]["args"]
    return {flag: args[args.index(flag) + 1] for flag in ("--input-stream", "--output-stream")}


def create_streams(config: Dict[str, Any]) -> None:
    """The two streams, as docs/deployment.md's "What you need" creates them (2 shards each), on
    the S3 server, which serves Kinesis too."""
    kinesis = boto3.client("kinesis")
    for name in stream_names(config).values():
        kinesis.create_stream(StreamName=name, ShardCount=STREAM_SHARDS)
        kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 1})


def signing_key_secret(config: Dict[str, Any]) -> str:
    """The secret bodywork.yaml takes MODEL_SIGNING_KEY from, if a stage takes it."""
    for stage in config["stages"].values():
        name: Optional[str] = (stage.get("secrets") or {}).get(ENVIRONMENT.signing_key)
        if name:
            return name
    return SIGNING_KEY_SECRET


def add_week(bucket: str, week_index: int) -> str:
    """Upload a week dropped at the synthetic week number `week_index`'s time (0 = the first),
    as data engineering would. Its orders are the tests' week (tests.helpers.TEST_WEEK_SEED),
    which trains a model that passes every check, so each deployment persists a new model."""
    timestamp = generate_weeks(week_index + 1)[-1].timestamp
    return put_dataset(bucket, generate_orders(n_rows=1000, seed=TEST_WEEK_SEED), timestamp, s3_client())
