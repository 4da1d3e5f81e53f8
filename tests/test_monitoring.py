"""The monitoring assets: the alerting rules (checked and unit-tested with promtool) and the
Grafana dashboard, whose every query must name metrics the real service exposes.

promtool comes from Debian's `prometheus` package. Where it is missing and the tests run as root
on Debian (CI, a fresh development machine), the `promtool` fixture installs the package once,
through .ci/machine-state.sh (TTD_MONITORING_PACKAGES, ttd_apt_install: recorded, so that
.ci/reset-machine purges it again); otherwise the tests are skipped with the reason, except
under CI (`CI=true`), where a missing promtool fails them.
"""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator, List, Set

import pytest
import yaml
from fastapi.testclient import TestClient

from pipeline.serve.api import create_app
from pipeline.settings import API, LOCAL
from tests.helpers import MACHINE_STATE, parse_metrics

MONITORING = LOCAL.repo_root / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yml"
ALERTS_TEST = MONITORING / "alerts_test.yml"
DASHBOARD = MONITORING / "dashboard.json"
# The metric names a query can use: the service's own and the client library's process metrics.
METRIC_NAME = re.compile(r"\b(?:time_to_dispatch|process|python)_[a-z0-9_]+\b")


# The suite's one way to install Debian packages: only the missing ones, apt waiting for another
# apt's locks, no daemon started by the package's scripts, each package recorded for the reset.
INSTALL_PROMTOOL = 'source "$1" && ttd_apt_install "${TTD_MONITORING_PACKAGES[@]}"'
# apt may wait up to 15 minutes for another apt's locks, then update its lists and install.
INSTALL_TIMEOUT = 1800


def install_promtool() -> str:
    """Install Debian's `prometheus` package; the reason it could not be installed, or "" once
    it is."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "not root on a Debian machine, so it cannot be installed here"
    command = ["bash", "-c", INSTALL_PROMTOOL, "bash", str(MACHINE_STATE)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    if result.returncode != 0:
        return f"`ttd_apt_install prometheus` (.ci/machine-state.sh) failed: {result.stderr.strip()[-500:]}"
    return ""


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        problem = install_promtool()
        path = shutil.which("promtool")
        if path is None:
            message = f"promtool is not installed (Debian package `prometheus`): {problem or 'not found after install'}"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(message)
            pytest.skip(message)
    return path


def run_promtool(promtool: str, *args: str, cwd: Path = MONITORING) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def alert_rules() -> List[Dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> Dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text())
    assert isinstance(loaded, dict)
    return loaded


def dashboard_queries() -> List[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def metric_names(queries: List[str]) -> Set[str]:
    return {name for query in queries for name in METRIC_NAME.findall(query)}


@pytest.fixture(scope="module")
def exposed_metric_names(trained_model_bytes: bytes) -> Iterator[Set[str]]:
    """Every sample name the real app exposes after answering a few requests of each kind."""
    import pickle

    client = TestClient(create_app(pickle.loads(trained_model_bytes)))
    client.post(API.predict_path, json={"product_code": "SKU001", "orders_placed": 10})
    client.post(API.predict_path, json={"product_code": "SKU001"})
    client.post(API.predict_batch_path, json=[{"product_code": "SKU002", "orders_placed": 400}])
    yield set(parse_metrics(client.get(API.metrics_path).text).names())


# --- the alerting rules ----------------------------------------------------------------------

def test_alert_rules_pass_promtool_check(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", ALERTS.name)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_alert_rules_unit_tests_pass(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", ALERTS_TEST.name)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_unit_tests_would_catch_a_broken_alert(promtool: str, tmp_path: Path) -> None:
    # The same tests against rules whose stale-model threshold is 140 days instead of 14.
    (tmp_path / ALERTS.name).write_text(ALERTS.read_text().replace("> 14 * 86400", "> 140 * 86400"))
    (tmp_path / ALERTS_TEST.name).write_text(ALERTS_TEST.read_text())

    result = run_promtool(promtool, "test", "rules", ALERTS_TEST.name, cwd=tmp_path)

    assert result.returncode != 0
    assert "alertname: TimeToDispatchModelStale" in result.stdout + result.stderr


def test_there_is_an_alert_for_each_thing_an_operator_is_woken_for() -> None:
    expressions = {rule["alert"]: rule["expr"] for rule in alert_rules()}

    assert {
        "TimeToDispatchHighErrorRate", "TimeToDispatchHighLatency", "TimeToDispatchNoTraffic",
        "TimeToDispatchModelStale", "TimeToDispatchOrdersPlacedOutsideTrainingRange",
    } <= set(expressions)
    assert "14 * 86400" in expressions["TimeToDispatchModelStale"]


def test_every_alert_fires_in_a_unit_test() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}

    assert fired == {rule["alert"] for rule in alert_rules()}


def test_every_alert_has_a_severity_and_a_summary() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


# --- the dashboard ---------------------------------------------------------------------------

def test_dashboard_is_a_grafana_dashboard_of_panels_with_queries() -> None:
    board = dashboard()

    assert (board["uid"], board["title"]) == ("time-to-dispatch", "time-to-dispatch service")
    assert isinstance(board["schemaVersion"], int)
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["type"] in {"timeseries", "stat", "table"}, panel["title"]
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}, panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)) and all(target["expr"] for target in panel["targets"])


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    # promtool has no stand-alone query check; as recording rules, the queries are parsed.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{n}", "expr": query} for n, query in enumerate(dashboard_queries())]}]}
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump(rules))

    result = run_promtool(promtool, "check", "rules", "dashboard_rules.yml", cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_the_dashboard_queries_is_exposed_by_the_service(exposed_metric_names: Set[str]) -> None:
    used = metric_names(dashboard_queries())

    assert len(used) >= 8
    assert sorted(used - exposed_metric_names) == []


def test_every_metric_the_alerts_and_their_tests_use_is_exposed_by_the_service(
    exposed_metric_names: Set[str]
) -> None:
    series = [case["series"] for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
              for case in test["input_series"]]
    used = metric_names([rule["expr"] for rule in alert_rules()] + series)

    assert len(used) >= 5
    assert sorted(used - exposed_metric_names) == []
