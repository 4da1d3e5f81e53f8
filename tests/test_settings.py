"""The settings module: every value with a unit and a reason, the budgets that depend on each
other asserted together, bodywork.yaml's serve limits mirrored exactly, and docs/settings.md
rendered from it."""
import dataclasses
import json
import subprocess
import sys
from typing import Any, Dict, List

import pytest
import yaml

from pipeline.settings import (
    ENVIRONMENT,
    LOCAL,
    MB,
    SERVE,
    SETTINGS,
    BudgetError,
    Settings,
    check_budgets,
    render_markdown,
)

SETTINGS_DOC = LOCAL.repo_root / "docs" / "settings.md"
BODYWORK_YAML = LOCAL.repo_root / "bodywork.yaml"


def with_setting(group: str, **changes: Any) -> Settings:
    """SETTINGS with some fields of one group changed."""
    return dataclasses.replace(SETTINGS, **{group: dataclasses.replace(getattr(SETTINGS, group), **changes)})


def every_field() -> List[dataclasses.Field]:  # type: ignore[type-arg]
    groups = [getattr(SETTINGS, group.name) for group in dataclasses.fields(SETTINGS)]
    return [item for group in groups for item in dataclasses.fields(group)]


def serve_stage() -> Dict[str, Any]:
    return dict(yaml.safe_load(BODYWORK_YAML.read_text())["stages"]["serve_model"])


def test_importing_the_settings_loads_no_third_party_module() -> None:
    # The local run imports it before its virtualenv exists.
    probe = ("import json, sys; before = set(sys.modules); import pipeline.settings; "
             "print(json.dumps(sorted(set(sys.modules) - before)))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=LOCAL.repo_root, capture_output=True, text=True,
                            timeout=60, env={"PATH": "/usr/bin:/bin", ENVIRONMENT.python_path: str(LOCAL.repo_root)})
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    third_party = [m for m in loaded if m.split(".")[0] not in (*sys.stdlib_module_names, "pipeline")]
    assert third_party == []


def test_every_setting_has_a_reason_and_a_unit_entry() -> None:
    missing = [item.name for item in every_field() if not item.metadata.get("why") or "unit" not in item.metadata]
    assert missing == []


def test_the_groups_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SERVE.max_body_bytes = 1  # type: ignore[misc]


def test_the_settings_as_they_are_fit_every_budget() -> None:
    check_budgets(SETTINGS)


@pytest.mark.parametrize("changes", [
    {"read_timeout_seconds": 26.0},
    {"connect_timeout_seconds": 11.0},
    {"max_attempts": 6},
])
def test_an_s3_budget_past_the_serve_start_up_limit_fails(changes: Dict[str, Any]) -> None:
    settings = with_setting("s3", **changes)
    worst = settings.s3.worst_case_call_seconds()
    with pytest.raises(BudgetError, match=rf"{worst:g} s for one call.*start-up limit of 120 s"):
        check_budgets(settings)


def test_a_start_up_limit_below_the_s3_budget_fails() -> None:
    with pytest.raises(BudgetError, match=r"91 s for one call .* start-up limit of 90 s"):
        check_budgets(with_setting("serve", max_startup_time_seconds=90))


def test_the_s3_worst_case_is_every_attempt_timing_out_plus_the_backoff() -> None:
    assert SETTINGS.s3.worst_case_call_seconds() == 4 * (3 + 18) + 1 + 2 + 4


@pytest.mark.parametrize("changes", [{"max_drain_seconds": 11}, {"graceful_shutdown_seconds": 23}])
def test_a_drain_and_graceful_stop_past_kubernetes_grace_period_fail(changes: Dict[str, Any]) -> None:
    settings = with_setting("serve", **changes)
    total = settings.serve.max_drain_seconds + settings.serve.graceful_shutdown_seconds
    with pytest.raises(BudgetError, match=rf"= {total} s, are over Kubernetes' grace period of 30 s"):
        check_budgets(settings)


@pytest.mark.parametrize("changes", [
    {"max_concurrent_requests": 200},
    {"max_open_connections": 8000},
    {"max_body_bytes": 4 * 2**20},
    {"resident_memory_mb": 330},
    {"memory_request_mb": 250},
])
def test_connections_times_the_body_limit_past_the_pods_memory_fail(changes: Dict[str, Any]) -> None:
    settings = with_setting("serve", **changes)
    with pytest.raises(BudgetError, match=rf"requests x .* over the serve pod's memory request of "
                                          rf"{settings.serve.memory_request_mb} MB"):
        check_budgets(settings)


def test_the_memory_budget_counts_the_head_limit_too() -> None:
    serve = SETTINGS.serve
    spare = serve.memory_request_mb * MB - serve.resident_memory_mb * MB
    spare -= serve.max_open_connections * serve.max_header_bytes
    per_request = serve.max_body_bytes + serve.max_header_bytes
    just_too_many = spare // per_request + 1
    assert just_too_many * serve.max_body_bytes <= spare  # the bodies alone would still fit
    with pytest.raises(BudgetError):
        check_budgets(with_setting("serve", max_concurrent_requests=just_too_many))


def test_the_start_up_limit_is_bodywork_yamls() -> None:
    assert serve_stage()["service"]["max_startup_time_seconds"] == SERVE.max_startup_time_seconds


def test_the_pods_memory_is_bodywork_yamls() -> None:
    assert serve_stage()["memory_request_mb"] == SERVE.memory_request_mb


def test_the_serve_port_is_bodywork_yamls() -> None:
    assert serve_stage()["service"]["port"] == SERVE.default_port


def test_bodywork_yamls_drain_is_within_the_most_the_service_accepts() -> None:
    args = serve_stage()["args"]
    assert 0 < float(args[args.index("--drain-seconds") + 1]) <= SERVE.max_drain_seconds


def test_the_settings_doc_is_the_module_rendered() -> None:
    assert SETTINGS_DOC.read_text() == render_markdown(), (
        "docs/settings.md differs from pipeline/settings.py; regenerate it (see the top of docs/settings.md)"
    )


def test_the_settings_doc_has_a_row_per_setting() -> None:
    doc = render_markdown()
    missing = [item.name for item in every_field() if f"| `{item.name}` |" not in doc]
    assert missing == []
