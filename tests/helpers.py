"""Helpers shared by the tests: paths, ports, the log format, CLIs and services in subprocesses,
the code blocks of the markdown docs, the deployment's files and commands.

Fixtures live in conftest.py; plain functions and containers that several test modules use
live here, once: a test module imports from here and from conftest, never from another test
module (tests/test_imports.py checks it).
"""
import base64
import functools
import http.client
import http.server
import json
import pickle
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import pytest
import yaml

from pipeline.artefact.model import Model
from pipeline.local.local_s3 import create_bucket
from pipeline.local.synthetic import generate_orders, generate_weeks
from pipeline.settings import API, LAYOUT, LOCAL, STREAM
from pipeline.storage.datasets import put_dataset
from pipeline.storage.layout import report_prefix
from pipeline.storage.report_files import put_report, report_digest
from pipeline.storage.signed_artefacts import put_model

# The machine state the suite creates outside the checkout: paths and Debian package lists.
MACHINE_STATE = LOCAL.repo_root / ".ci" / "machine-state.sh"
# The synthetic week the tests train on: a week like the notebook's (see docs/data-and-model.md).
TEST_WEEK_SEED = 4
# A line in the project's log format: LOG_FORMAT with its fields filled in. `%(funcName)s` is
# `<module>` for lines logged by a CLI block itself.
LOG_LINE = re.compile(
    r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} - (DEBUG|INFO|WARNING|ERROR|CRITICAL) - \S+\.(\S+|<module>) - "
)
START_TIMEOUT = 60.0
# The signing key every test process and stage subprocess gets (conftest sets it); tests of
# a missing, wrong or rotated key set their own.
TEST_SIGNING_KEY = "test:" + "0123456789abcdef" * 4


def signed_metadata(body: bytes, key: str, signing_key: str = TEST_SIGNING_KEY) -> Dict[str, str]:
    """The metadata `put_model` gives an artefact at the S3 key `key`: its SHA-256 and its
    signature under `signing_key` ("KEY_ID:SECRET"), computed here as docs/reliability.md
    describes them (HMAC-SHA256, in hex, over the compact JSON of the key, the scheme and the
    SHA-256 of the bytes) rather than by the code under test."""
    import hashlib
    import hmac
    import json

    key_id, _, secret = signing_key.partition(":")
    digest = hashlib.sha256(body).hexdigest()
    message = json.dumps({"key": key, "scheme": "2", "sha256": digest}, sort_keys=True, separators=(",", ":"))
    return {
        LAYOUT.sha256_metadata_key: digest,
        LAYOUT.key_id_metadata_key: key_id,
        LAYOUT.signature_metadata_key: hmac.new(secret.encode("utf-8"), message.encode(), hashlib.sha256).hexdigest(),
        LAYOUT.signature_scheme_metadata_key: "2",
    }


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind((LOCAL.loopback_host, 0))
        return int(sock.getsockname()[1])


def port_accepts(port: int, host: str = LOCAL.loopback_host) -> bool:
    """Whether something accepts TCP connections on the port right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def run_cli(
    args: List[str], env: Dict[str, str], cwd: Optional[Path] = None, timeout: float = 120
) -> "subprocess.CompletedProcess[str]":
    """Run a command with the test interpreter, capturing its output as text."""
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd or LOCAL.repo_root, capture_output=True,
        text=True, timeout=timeout,
    )


def error_lines(output: str) -> List[str]:
    """The ERROR log lines of a stage's output."""
    return [line for line in output.splitlines() if " - ERROR - " in line]


class Service(NamedTuple):
    """The serve stage (or another server) running as a subprocess, its output in a file."""

    process: "subprocess.Popen[str]"
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()

    @property
    def url(self) -> str:
        return f"http://{LOCAL.loopback_host}:{self.port}"


def start_service(
    args: List[str], env: Dict[str, str], tmp_path: Path, cwd: Optional[Path] = None
) -> Service:
    """Start a CLI with `--host 127.0.0.1 --port N` added, its stdout and stderr to a file."""
    port = free_port()
    log_path = tmp_path / f"serve-{port}.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, *args, "--host", LOCAL.loopback_host, "--port", str(port)],
            env=env, cwd=cwd or LOCAL.repo_root, stdout=log_file, stderr=subprocess.STDOUT, text=True,
        )
    return Service(process, port, log_path)


def wait_until_listening(service: Service, timeout: float = START_TIMEOUT) -> None:
    """Return once the service accepts connections; fail if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            pytest.fail(f"the service exited with {service.process.returncode}:\n{service.log()}")
        if port_accepts(service.port):
            return
        time.sleep(0.05)
    pytest.fail(f"the service did not open its port within {timeout}s:\n{service.log()}")


def wait_for_log(service: Service, text: str, timeout: float = 10.0) -> None:
    """Return once `text` is in the service's output; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while text not in service.log():
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} not logged within {timeout}s:\n{service.log()}")
        time.sleep(0.02)


def stop_service(service: Service, timeout: float = 30) -> int:
    """SIGTERM the service and return its exit code (killing it if it hangs)."""
    if service.process.poll() is None:
        service.process.send_signal(signal.SIGTERM)
    try:
        return service.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        service.process.kill()
        service.process.wait()
        raise


# What the `start` fixture (conftest) gives a test: `start(args, env, cwd=None) -> Service`.
StartService = Callable[..., Service]


def wait_for_exit_watching_port(service: Service, timeout: float = START_TIMEOUT) -> bool:
    """Wait for the process to exit; True if its port accepted a connection meanwhile."""
    opened = False
    deadline = time.monotonic() + timeout
    while service.process.poll() is None:
        if time.monotonic() > deadline:
            pytest.fail(f"the service did not exit within {timeout}s:\n{service.log()}")
        opened = opened or port_accepts(service.port)
        time.sleep(0.02)
    return opened or port_accepts(service.port)


def the_error_of_a_failed_start(bucket: str, env: Dict[str, str], start: StartService) -> str:
    """Start the service on `bucket`, expect exit 1 with its port never opened; its one ERROR line."""
    service = start(["-m", "pipeline.serve_model", bucket], env)

    opened = wait_for_exit_watching_port(service)

    assert service.process.returncode == 1
    assert not opened
    [line] = error_lines(service.log())
    return line


def logged_json(lines: List[str], marker: str) -> Any:
    """The JSON logged after `marker` on the first line that has it."""
    import json

    for line in lines:
        if marker in line:
            return json.loads(line.split(marker, 1)[1])
    raise AssertionError(f"no line with {marker!r} in the output:\n" + "\n".join(lines))


def models_created(bucket: str, model: Model, days: List[int], with_report: bool = True) -> List[Model]:
    """Copies of `model` created on the given days of October 2026 with ids `000000DD`,
    persisted; oldest first, each with its report (whose SHA-256 it records, as the train stage
    does). Without a report they are like models made before reports existed."""
    made = []
    for day in days:
        copy = pickle.loads(pickle.dumps(model))
        copy.created_at = datetime(2026, 10, day, 12, tzinfo=timezone.utc)
        copy.artefact_id = f"{day:08d}"
        copy.report_key = None
        if with_report:
            prefix = report_prefix(copy)
            page = f"<html>report of {copy.artefact_id}</html>".encode()
            put_report(bucket, prefix, {"report.html": page})
            copy.report_key = prefix + "report.html"
            copy.report_sha256 = report_digest(page)
        put_model(bucket, copy)
        made.append(copy)
    return made


def persist_model_copy(bucket: str, model: Any, created_at: Any, artefact_id: str) -> Any:
    """A copy of `model` created at `created_at` with `artefact_id`, persisted to the bucket."""
    import pickle

    copy = pickle.loads(pickle.dumps(model))
    copy.created_at = created_at
    copy.artefact_id = artefact_id
    put_model(bucket, copy)
    return copy


def model_keys(client: Any, bucket: str) -> List[str]:
    """Every key under `models/`, as S3 lists them."""
    listing = client.list_objects_v2(Bucket=bucket, Prefix=LAYOUT.models_prefix)
    return [item["Key"] for item in listing.get("Contents", [])]


def newest_model_key(bucket: str) -> Optional[str]:
    """The key of the newest model artefact by the time in its key, rejected or not; None if none."""
    from pipeline.storage.layout import NoObjectsError, latest_object

    try:
        return latest_object(bucket, LAYOUT.models_prefix, ".pkl").key
    except NoObjectsError:
        return None


def put_csv(client: Any, bucket: str, key: str, frame: Any) -> Dict[str, Any]:
    """Upload a frame as CSV under any key; the bytes written and S3's answer (ETag, VersionId)."""
    body = frame.to_csv(index=False).encode()
    response: Dict[str, Any] = client.put_object(Bucket=bucket, Key=key, Body=body)
    return {"body": body, **response}


def status_change(model: Model, action: str, minutes: int = 0) -> Any:
    """A registry record of `action` ("reject", "restore") on a persisted model, made
    `minutes` after 2026-11-01 09:30 UTC."""
    from pipeline.model_registry.records import StatusChange

    assert model.artefact_key is not None
    when = datetime(2026, 11, 1, 9, 30, tzinfo=timezone.utc) + timedelta(minutes=minutes)
    return StatusChange(model.artefact_key, action, "a reason", "tester", when)


def csv_text(rows: List[List[str]]) -> str:
    """Rows of fields as CSV text, `\\n` line ends."""
    import csv
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


class Scrape:
    """The samples of one scrape of a Prometheus text exposition, queried by name and labels."""

    def __init__(self, samples: List[Any]) -> None:
        self.samples = samples

    def series(self, name: str, **labels: str) -> List[Any]:
        """(labels, value) of every sample named `name` whose labels include `labels`, in order."""
        return [(sample.labels, sample.value) for sample in self.samples
                if sample.name == name and labels.items() <= sample.labels.items()]

    def value(self, name: str, **labels: str) -> float:
        """The value of the one sample named `name` with exactly these labels (the `le`s aside)."""
        matching = [value for sample_labels, value in self.series(name, **labels) if sample_labels == labels]
        if len(matching) != 1:
            raise AssertionError(f"{len(matching)} samples {name}{labels}; there are: {self.series(name)}")
        return float(matching[0])

    def names(self) -> List[str]:
        return sorted({sample.name for sample in self.samples})


def parse_metrics(text: Union[str, bytes]) -> Scrape:
    """Parse a Prometheus text exposition (what `GET /metrics` answers)."""
    from prometheus_client.parser import text_string_to_metric_families

    if isinstance(text, bytes):
        text = text.decode()
    return Scrape([sample for family in text_string_to_metric_families(text) for sample in family.samples])


def crafted_model(model: Any, edit_tree_state: Any) -> Any:
    """A copy of `model` whose tree was rebuilt from a pickled state changed by
    `edit_tree_state(state)`: an artefact of only allowed classes, as someone who can write
    `models/` could craft it (scikit-learn's own loading accepts such states)."""
    import copy
    import pickle

    crafted = pickle.loads(pickle.dumps(model))
    tree_class, tree_args, state = crafted.estimator.tree_.__reduce__()
    state = copy.deepcopy(state)
    edit_tree_state(state)
    tree = tree_class(*tree_args)
    tree.__setstate__(state)
    crafted.estimator.tree_ = tree
    return crafted


def bucket_with_weeks(client: Any, name: str) -> str:
    """A versioned bucket with three weekly datasets, the newest being the tests' week."""
    create_bucket(client, name)
    weeks = generate_weeks(3, seed=100)
    for week in weeks[:-1]:
        put_dataset(name, week.data, week.timestamp, client)
    put_dataset(name, generate_orders(1000, seed=TEST_WEEK_SEED), weeks[-1].timestamp, client)
    return name


def latest_drop() -> datetime:
    """A drop time newer than every synthetic week the fixtures upload (October 2026), and not
    in the future: keys dated beyond now are ignored as mistyped (`pipeline/storage/layout.py`)."""
    return datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=1)


def copy_working_tree(target: Path) -> None:
    """Copy the working tree as it is now into `target`: tracked and untracked files that git
    does not ignore, a tracked file deleted in the working tree left out."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=LOCAL.repo_root, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = LOCAL.repo_root / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def make_stage_repo(repo: Path, serve_args: List[str], branch: str = "master") -> str:
    """Make `repo` a one-commit git repository of the working tree as it is now (tracked and
    untracked files that git does not ignore), on `branch`, for Bodywork's stage runner to
    clone over `file://` as it clones the real repository in a pod.

    Its bodywork.yaml differs from the real one only in `serve_args`, added to the serve
    stage's args (e.g. `--host 127.0.0.1`, so that the service listens on loopback only).

    Returns:
        The commit's hash.
    """
    copy_working_tree(repo)
    config_path = repo / "bodywork.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["stages"]["serve_model"]["args"] += serve_args
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    git = ["git", "-c", "user.name=tests", "-c", "user.email=tests@localhost"]
    for command in (
        ["init", "--quiet", f"--initial-branch={branch}"],
        ["add", "--all"],
        ["commit", "--quiet", "--no-verify", "--message", "the working tree under test"],
    ):
        subprocess.run(git + command, cwd=repo, check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
    return head.stdout.strip()


# --- markdown -----------------------------------------------------------------------------

# A code fence: three or more backticks, then the info string (```` ```sh deployment-commands ````).
FENCE = re.compile(r"^\s*(`{3,})([^`]*)$")


def fenced_blocks(path: Path) -> List[Tuple[List[str], str]]:
    """Every fenced code block of a markdown file, in order: the words of its info string
    (```` ```sh deployment-commands ```` -> `["sh", "deployment-commands"]`) and its text.

    A fence may be indented (a block inside a list item); a block ends at a line of at least
    as many backticks as opened it and nothing else.
    """
    blocks: List[Tuple[List[str], str]] = []
    opening: Optional[Tuple[int, List[str]]] = None
    body: List[str] = []
    for line in path.read_text().splitlines():
        fence = FENCE.match(line)
        if opening is None:
            if fence:
                opening, body = (len(fence.group(1)), fence.group(2).split()), []
        elif fence and len(fence.group(1)) >= opening[0] and not fence.group(2).strip():
            blocks.append((opening[1], "\n".join(body)))
            opening = None
        else:
            body.append(line)
    assert opening is None, f"{path.relative_to(LOCAL.repo_root)}: a code block is never closed"
    return blocks


def doc_blocks(path: Path, marker: str) -> List[str]:
    """The text of every code block in `path` whose info string carries `marker` after the
    language; at least one must."""
    found = [text for info, text in fenced_blocks(path) if marker in info[1:]]
    assert found, f"{path.relative_to(LOCAL.repo_root)} has no code block marked {marker!r}"
    return found


# --- the deployment's files and commands ---------------------------------------------------

DEPLOYMENT_DOC = LOCAL.repo_root / "docs" / "deployment.md"
# The deployment's commands are the code blocks of docs/deployment.md whose info string carries
# this marker (```` ```sh deployment-commands ````): the tests read those blocks, never the prose
# or the headings around them.
DEPLOYMENT_COMMANDS = "deployment-commands"
# What runs the pipeline in production besides bodywork.yaml and the Dockerfile: files under
# deploy/, which the docs link to and apply, and never copy.
DEPLOY = LOCAL.repo_root / "deploy"
KUBERNETES_DIR = DEPLOY / "kubernetes"
CRONJOB_V1 = KUBERNETES_DIR / "cronjob-v1.yaml"
BATCH_JOB = KUBERNETES_DIR / "batch-job.yaml"
SERVICEMONITOR = KUBERNETES_DIR / "servicemonitor.yaml"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "scrape-config.yaml"


def deploy_yaml(path: Path) -> Dict[str, Any]:
    """A YAML file of deploy/ holding one mapping (a Kubernetes object, a scrape configuration),
    as plain data."""
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), f"{path.relative_to(LOCAL.repo_root)} is not a mapping"
    return loaded


def bodywork_commands(text: str) -> List[List[str]]:
    """Every `bodywork ...` command in a piece of shell, split as a shell would.

    Lines ending in a backslash continue on the next line; a leading `$ ` prompt is dropped.
    """
    commands: List[List[str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if pending:
            line = pending + " " + line
            pending = ""
        if line.endswith("\\"):
            pending = line[:-1].strip()
            continue
        line = line[2:] if line.startswith("$ ") else line
        if line.startswith("bodywork "):
            commands.append(shlex.split(line))
    return commands


def deployment_text() -> str:
    """The code blocks of docs/deployment.md marked `deployment-commands`, joined."""
    return "\n".join(doc_blocks(DEPLOYMENT_DOC, DEPLOYMENT_COMMANDS))


def deployment_commands() -> List[List[str]]:
    """Every `bodywork ...` command of the deployment steps in docs/deployment.md."""
    return bodywork_commands(deployment_text())


def deployment_commands_starting(*words: str) -> List[List[str]]:
    """Every deployment command that starts `bodywork WORDS...`, in the document's order."""
    return [c for c in deployment_commands() if c[1:1 + len(words)] == list(words)]


def deployment_command(*words: str) -> List[str]:
    """The one deployment command that starts `bodywork WORDS...`."""
    found = [c for c in deployment_commands() if c[1:1 + len(words)] == list(words)]
    assert len(found) == 1, f"docs/deployment.md should have one `bodywork {' '.join(words)}` command, has {found}"
    return found[0]


def parse_with_bodywork_cli(command: List[str]) -> Tuple[List[str], Dict[str, Any]]:
    """The sub-command path and the parsed parameters of a `bodywork ...` command line, as
    Bodywork's own command-line app (typer on click) parses it, without running it. Needs the
    Bodywork package (the `bodywork` and `cluster` tox environments).

    Raises:
        click.UsageError: as the CLI would report it (unknown option, missing argument, ...).
    """
    import click
    import typer
    from bodywork.cli.cli import cli_app

    group = typer.main.get_command(cli_app)
    context = group.make_context("bodywork", command[1:])
    current: click.Command = group
    path: List[str] = []
    while isinstance(current, click.MultiCommand):
        name, sub, rest = current.resolve_command(context, context.protected_args + context.args)
        assert name is not None and sub is not None
        path.append(name)
        context = sub.make_context(name, rest, parent=context)
        current = sub
    return path, context.params


@functools.lru_cache(maxsize=None)
def machine_state() -> Dict[str, str]:
    """The paths .ci/machine-state.sh defines (its TTD_STATE_PATH_VARS), as it computes them from
    this process's environment: the one definition the shell scripts use too. Read once."""
    script = 'source "$1" && for name in "${TTD_STATE_PATH_VARS[@]}"; do printf "%s=%s\\0" "$name" "${!name}"; done'
    done = subprocess.run(["bash", "-c", script, "bash", str(MACHINE_STATE)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"sourcing {MACHINE_STATE} failed: {done.stderr}"
    return dict(item.split("=", 1) for item in done.stdout.split("\0") if item)


class MlflowServer(NamedTuple):
    """A real MLflow tracking server (`mlflow server`, SQLite backend, a local artifact folder)."""

    process: "subprocess.Popen[bytes]"
    uri: str


def start_mlflow_server(folder: Path, timeout: float = 120.0) -> MlflowServer:
    """Start `mlflow server` on a free loopback port with its database and artifacts in `folder`
    and wait until it answers its health check; its output goes to `folder`/server.log."""
    import urllib.request

    port = free_port()
    (folder / "artifacts").mkdir(parents=True, exist_ok=True)
    with open(folder / "server.log", "ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
             "--artifacts-destination", str(folder / "artifacts"), "--host", LOCAL.loopback_host,
             "--port", str(port), "--workers", "1"],
            stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://{LOCAL.loopback_host}:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}: "
                               f"{(folder / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/version", timeout=2) as response:
                if response.status == 200:
                    return MlflowServer(process, uri)
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"mlflow server did not answer within {timeout:g} s")


def stop_mlflow_server(server: MlflowServer) -> None:
    """Stop the server and every worker it started (its own session)."""
    import os

    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()


def tracking_env(monkeypatch: pytest.MonkeyPatch, uri: str, bucket: str) -> None:
    """Tracking on, to `uri`, with the test's own experiment and registered model (the bucket's name)."""
    from pipeline.settings import ENVIRONMENT

    monkeypatch.setenv(ENVIRONMENT.mlflow_tracking_uri, uri)
    monkeypatch.setenv(ENVIRONMENT.mlflow_experiment_name, bucket)
    monkeypatch.setenv(ENVIRONMENT.mlflow_registered_model_name, bucket)


# The parts a model artefact gained with the served estimate (calibration, upper bound, ranges).
SERVED_PARTS = ("calibration", "upper_bound", "trained_ranges", "tree_metrics", "served_monotonicity")


def made_before_the_served_parts(model: Any) -> Any:
    """A copy of `model` as an artefact pickled before the served parts existed holds it: without
    those attributes, so that unpickled it reads them from the class defaults."""
    import copy

    old = copy.copy(model)
    for name in SERVED_PARTS:
        old.__dict__.pop(name, None)
    return old


# --- a Kinesis partial failure, for real over HTTP ---------------------------------------------

ACCESS_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
                 b"<Message>Access Denied</Message><RequestId>fault</RequestId></Error>")


def client_gone(connection: socket.socket) -> bool:
    """Whether the peer of a server's connection has closed it (a client waiting for an answer
    sends nothing, so a readable socket is one at its end)."""
    import select

    readable, _, _ = select.select([connection], [], [], 0)
    try:
        return bool(readable) and connection.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class AwsFaultProxy:
    """An HTTP proxy on loopback in front of the local AWS server that fails chosen PutRecords
    entries as a throttled shard does: the entries are taken out of the request before it is
    forwarded (so they are not written) and put back into the answer, in place, marked
    ProvisionedThroughputExceededException. With `deny_s3_puts_under` set to a key prefix, it
    answers every S3 PUT under it 403 AccessDenied; with `slow_s3_puts_under` set to (a key
    prefix, seconds), it forwards every S3 PUT under it that much later, and not at all if the
    client has gone meanwhile (killed: its PUT never reached S3). Every other request goes
    through unchanged.

        proxy = AwsFaultProxy(upstream_endpoint).start()
        proxy.fail("ORD-3", times=1)      # the entry of partition key ORD-3 fails once
        proxy.fail("ORD-4")               # ... fails every time
        client = boto3.client("kinesis", endpoint_url=proxy.endpoint)
        proxy.stop()

    `put_records_calls` holds, for each PutRecords forwarded or answered, the partition keys of
    its entries in order.
    """

    ALWAYS = -1

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit("//", 1)[1].split(":")
        self.upstream = (host, int(port))
        self.failures: Dict[str, int] = {}
        self.deny_s3_puts_under: Optional[str] = None
        self.slow_s3_puts_under: Optional[Tuple[str, float]] = None
        self.put_records_calls: List[List[str]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self._relay("POST")

            def do_GET(self) -> None:
                self._relay("GET")

            def do_PUT(self) -> None:
                self._relay("PUT")

            def do_HEAD(self) -> None:
                self._relay("HEAD")

            def do_DELETE(self) -> None:
                self._relay("DELETE")

            def _relay(self, method: str) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length) if length else b""
                denied, slow = proxy.deny_s3_puts_under, proxy.slow_s3_puts_under
                if method == "PUT" and slow is not None and f"/{slow[0]}" in self.path:
                    time.sleep(slow[1])
                    if client_gone(self.connection):
                        return
                if method == "PUT" and denied is not None and f"/{denied}" in self.path:
                    status, headers, answer = 403, [("Content-Type", "application/xml")], ACCESS_DENIED
                elif self.headers.get("X-Amz-Target", "").endswith(".PutRecords"):
                    status, headers, answer = proxy._put_records(self.path, dict(self.headers), body)
                else:
                    status, headers, answer = proxy._forward(method, self.path, dict(self.headers), body)
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ("content-length", "connection", "transfer-encoding", "server", "date"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(answer)

        self.server = http.server.ThreadingHTTPServer((LOCAL.loopback_host, 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://{LOCAL.loopback_host}:{self.server.server_address[1]}"

    def start(self) -> "AwsFaultProxy":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def fail(self, partition_key: str, times: int = ALWAYS) -> None:
        """Fail the PutRecords entries of `partition_key`, `times` times (ALWAYS: every time)."""
        with self.lock:
            self.failures[partition_key] = times

    def _take_failure(self, partition_key: str) -> bool:
        with self.lock:
            left = self.failures.get(partition_key, 0)
            if left == 0:
                return False
            if left > 0:
                self.failures[partition_key] = left - 1
            return True

    def _forward(self, method: str, path: str, headers: Dict[str, str], body: bytes) -> Tuple[int, Any, bytes]:
        connection = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            sent = {name: value for name, value in headers.items() if name.lower() not in ("connection", "expect")}
            sent["Content-Length"] = str(len(body))
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def _put_records(self, path: str, headers: Dict[str, str], body: bytes) -> Tuple[int, Any, bytes]:
        request = json.loads(body)
        records = request["Records"]
        with self.lock:
            self.put_records_calls.append([record["PartitionKey"] for record in records])
        failed = [self._take_failure(record["PartitionKey"]) for record in records]
        kept = [record for record, fails in zip(records, failed) if not fails]
        if kept:
            status, answer_headers, answer = self._forward(
                "POST", path, headers, json.dumps({**request, "Records": kept}).encode())
            if status != 200:
                return status, answer_headers, answer
            written = iter(json.loads(answer)["Records"])
        else:
            status, answer_headers, written = 200, [("Content-Type", "application/x-amz-json-1.1")], iter([])
        stream = request.get("StreamName", "")
        results = [
            {"ErrorCode": "ProvisionedThroughputExceededException",
             "ErrorMessage": f"Rate exceeded for shard shardId-000000000000 in stream {stream} under account "
                             "123456789012."} if fails else next(written)
            for fails in failed
        ]
        return status, answer_headers, json.dumps({"FailedRecordCount": sum(failed), "Records": results}).encode()


def read_stream(kinesis: Any, stream: str) -> List[Dict[str, Any]]:
    """Every record on every shard of `stream`, shard by shard, each in sequence order."""
    records: List[Dict[str, Any]] = []
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType=STREAM.start_positions[0])["ShardIterator"]
        while iterator:
            answer = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            records += answer["Records"]
            if not answer["Records"]:
                break
            iterator = answer.get("NextShardIterator")
    return records


def lambda_kinesis_event(kinesis: Any, stream: str, shard_id: str, starting_at: Optional[str] = None,
                         limit: int = 100) -> Dict[str, Any]:
    """A batch of `stream`'s shard as Lambda's Kinesis event source sends it to a function: up to
    `limit` records read with GetRecords from the shard's start (or from the record of sequence
    number `starting_at`, as Lambda resumes after a reported failure), each with its data
    base64-encoded, its eventID `<shard>:<seq>`, the stream's ARN, and the other fields AWS sets."""
    if starting_at is None:
        start = {"ShardIteratorType": STREAM.start_positions[0]}
    else:
        start = {"ShardIteratorType": "AT_SEQUENCE_NUMBER", "StartingSequenceNumber": starting_at}
    iterator = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard_id, **start)["ShardIterator"]
    records = kinesis.get_records(ShardIterator=iterator, Limit=limit)["Records"]
    arn = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamARN"]
    region = arn.split(":")[3]
    return {"Records": [{
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": record["PartitionKey"],
            "sequenceNumber": record["SequenceNumber"],
            "data": base64.b64encode(record["Data"]).decode("ascii"),
            "approximateArrivalTimestamp": record["ApproximateArrivalTimestamp"].timestamp(),
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{shard_id}:{record['SequenceNumber']}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": f"arn:aws:iam::{arn.split(':')[4]}:role/time-to-dispatch-stream",
        "awsRegion": region,
        "eventSourceARN": arn,
    } for record in records]}


LAMBDA_REQUIREMENTS = LOCAL.repo_root / "requirements_lambda.txt"


def lambda_package(target: Path) -> Path:
    """A folder laid out as the Lambda's package is (`pip install -r requirements_lambda.txt -t
    DIR`), made from the distributions installed here: for each one requirements_lambda.txt pins,
    at the pinned version, a link to each of its top-level files and folders. Nothing else is in
    it: a Python started with `-S` and this folder and the repository's root on its path (for
    `pipeline/`) sees only what the package would hold."""
    from importlib import metadata

    target.mkdir(parents=True, exist_ok=True)
    for line in LAMBDA_REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, version = line.split("==")
        installed = metadata.distribution(name)
        assert installed.version == version, f"{line} but {installed.version} is installed"
        for top in sorted({Path(str(file)).parts[0] for file in installed.files or []} - {".."}):
            link = target / top
            if not link.exists():
                link.symlink_to(Path(str(installed.locate_file(top))))
    return target


# --- streams (the stream consumer's tests) ---------------------------------------------------


def create_stream(client: Any, shards: int = 1) -> str:
    """A new stream of `shards` shards with a unique name, active."""
    import uuid

    name = f"ttd-{uuid.uuid4().hex[:12]}"
    client.create_stream(StreamName=name, ShardCount=shards)
    client.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 50})
    return name


def put_events(client: Any, stream: str, events: List[bytes], keys: List[str]) -> None:
    """Put raw event records on a stream, 500 a call, each with its partition key; all must be taken."""
    for start in range(0, len(events), 500):
        entries = [{"Data": data, "PartitionKey": key}
                   for data, key in zip(events[start:start + 500], keys[start:start + 500])]
        response = client.put_records(StreamName=stream, Records=entries)
        assert response.get("FailedRecordCount", 0) == 0, response


def read_stream_json(client: Any, stream: str) -> List[Dict[str, Any]]:
    """Every record on every shard of a stream, from its beginning: its JSON data as a dict."""
    return [json.loads(record["Data"]) for record in read_stream(client, stream)]


def http_status(url: str) -> Tuple[int, str]:
    """GET a URL on this machine: its status and body (no proxy, errors answered too)."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as response:
            return int(response.status), response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode("utf-8")


def wait_until_ready(service: Service, timeout: float = START_TIMEOUT) -> None:
    """Return once the consumer's /ready answers 200; fail if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            pytest.fail(f"the consumer exited with {service.process.returncode}:\n{service.log()}")
        if port_accepts(service.port) and http_status(f"{service.url}{API.ready_path}")[0] == 200:
            return
        time.sleep(0.05)
    pytest.fail(f"the consumer was not ready within {timeout}s:\n{service.log()}")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120.0,
             service: Optional[Service] = None) -> None:
    """Return once `condition()` holds; fail naming `what` after `timeout` (or if `service` exits)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if service is not None and service.process.poll() is not None:
            pytest.fail(f"the consumer exited with {service.process.returncode} before {what}:\n{service.log()}")
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} within {timeout}s" + (f":\n{service.log()}" if service else ""))
        time.sleep(0.2)


def dead_letter_lines(client: Any, bucket: str, prefix: str) -> List[Dict[str, Any]]:
    """Every dead letter (a JSON line) in the objects under `prefix`."""
    import json

    lines: List[Dict[str, Any]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().decode("utf-8")
            lines += [json.loads(line) for line in body.splitlines() if line.strip()]
    return lines
