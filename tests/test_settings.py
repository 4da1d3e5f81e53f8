"""The settings module: every value with a unit and a reason, the budgets that depend on each
other asserted together, bodywork.yaml's serve limits mirrored exactly, docs/settings.md
rendered from it, and no path, limit or variable name of it written out again elsewhere."""
import ast
import dataclasses
import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

import pytest
import yaml

from pipeline.settings import (
    ENVIRONMENT,
    LAYOUT,
    LOCAL,
    MB,
    SERVE,
    SETTINGS,
    STREAM,
    BudgetError,
    Settings,
    check_budgets,
    render_markdown,
)

SETTINGS_DOC = LOCAL.repo_root / "docs" / "settings.md"
BODYWORK_YAML = LOCAL.repo_root / "bodywork.yaml"
SETTINGS_MODULE = LOCAL.repo_root / "pipeline" / "settings.py"
# The folders whose Python files import a setting rather than spell its value out again.
SCANNED_FOLDERS = ("pipeline", "tests", "benchmarks")
# Shorter strings ("0.1", "", single letters) are equal to a setting too often by chance.
MIN_LITERAL_CHARS = 4
# Literals equal to a setting's value that are written out on purpose: (file, value).
ALLOWED_LITERALS = {
    # Pins the default host the product brief names: a change of the setting must fail a test.
    ("tests/serve/test_start_up.py", SERVE.default_host),
    # The Prometheus metrics' name prefix, equal to the S3 files' stem by coincidence.
    ("pipeline/serve/metrics.py", LAYOUT.model_file_stem),
    # The OCI image layout's digest algorithm (blobs/sha256/, "sha256:<hex>"), not an S3 metadata key.
    ("tests/cluster/mkimage.py", LAYOUT.sha256_metadata_key),
    # A field of the signed message's JSON (the signature's format, docs/reliability.md), equal to the
    # S3 metadata key's name by coincidence; the tests rebuild that message as documented.
    ("pipeline/artefact/signing.py", LAYOUT.sha256_metadata_key),
    ("tests/artefact/test_signing.py", LAYOUT.sha256_metadata_key),
    ("tests/helpers.py", LAYOUT.sha256_metadata_key),
    # Pins the production stream names bodywork.yaml gives the stream stage, equal to the local
    # run's input stream by choice: a change of the local run's names must not move production's.
    ("tests/bodywork/test_config.py", STREAM.local_input_stream),
}

# Folders whose literals are the product's contracts as PRODUCT.md writes them, on purpose: their
# tests run unchanged against commits from before this module existed (docs/reliability.md,
# "Round two: shown on 7ab96a0"), so they cannot import it, and a setting changed under a
# contract (a path, a prefix, a variable's name) must make them fail rather than follow it.
CONTRACT_FOLDERS = ("tests/contract/",)


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


@pytest.mark.parametrize("group, changes, message", [
    ("s3", {"serve_deadline_seconds": 90.0}, r"serve stage's S3 deadline, 90 s, must be at least .* \(91 s\)"),
    ("s3", {"serve_deadline_seconds": 101.0}, r"serve stage's S3 deadline, 101 s, .* limit of 120 s less 20 s"),
    ("s3", {"train_deadline_seconds": 450.0}, r"train stage's S3 deadline, 450 s, .* limit of 500 s less 60 s"),
    ("train", {"max_completion_time_seconds": 480}, r"train stage's S3 deadline, 440 s, .* limit of 480 s"),
])
def test_an_s3_deadline_outside_its_stage_limit_or_below_one_call_fails(
    group: str, changes: Dict[str, Any], message: str
) -> None:
    with pytest.raises(BudgetError, match=message):
        check_budgets(with_setting(group, **changes))


def test_batch_scorings_two_aborts_after_sigterm_past_kubernetes_grace_period_fail() -> None:
    with pytest.raises(BudgetError, match=r"2 x 13 s, do not fit Kubernetes' grace period of 30 s"):
        check_budgets(with_setting("s3", abort_after_stop_seconds=13.0))


def test_the_train_job_limit_is_bodywork_yamls() -> None:
    train_stage = yaml.safe_load(BODYWORK_YAML.read_text())["stages"]["train_model"]
    assert train_stage["batch"]["max_completion_time_seconds"] == SETTINGS.train.max_completion_time_seconds


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


class Literal(NamedTuple):
    """A string literal in a Python file that is equal to a setting's value."""

    file: str
    line: int
    value: str
    settings: Tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.value!r} is {' or '.join(self.settings)}"


def string_settings(settings: Settings = SETTINGS) -> Dict[str, List[str]]:
    """Every string value of the settings, and every string in a tuple value, of at least
    MIN_LITERAL_CHARS characters, with the names of the settings that hold it."""
    names: Dict[str, List[str]] = {}
    for group in dataclasses.fields(settings):
        values = getattr(settings, group.name)
        for item in dataclasses.fields(values):
            value, name = getattr(values, item.name), f"{group.name.upper()}.{item.name}"
            parts = [(f"{name}[{i}]", part) for i, part in enumerate(value)] if isinstance(value, tuple) \
                else [(name, value)]
            for part_name, part in parts:
                if isinstance(part, str) and len(part) >= MIN_LITERAL_CHARS:
                    names.setdefault(part, []).append(part_name)
    return names


def settings_literals(source: str, file: str, values: Optional[Mapping[str, List[str]]] = None) -> List[Literal]:
    """The string literals of `source` (every `ast.Constant`, f-strings' literal parts included)
    that are exactly a setting's value; a value inside a longer string or a comment is not one."""
    values = string_settings() if values is None else values
    found = [Literal(file, node.lineno, node.value, tuple(values[node.value]))
             for node in ast.walk(ast.parse(source, file))
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in values]
    return sorted(found)


@functools.lru_cache(maxsize=None)
def repeated_literals() -> Tuple[Literal, ...]:
    """The settings' values written out as literals in the scanned folders' Python files."""
    values = string_settings()
    files = sorted(path for folder in SCANNED_FOLDERS for path in (LOCAL.repo_root / folder).rglob("*.py")
                   if path != SETTINGS_MODULE)
    return tuple(literal for path in files
                 for literal in settings_literals(path.read_text(), relative(path), values))


def relative(path: Path) -> str:
    return path.relative_to(LOCAL.repo_root).as_posix()


def test_no_settings_value_is_written_out_again_as_a_literal() -> None:
    repeated = [str(literal) for literal in repeated_literals()
                if (literal.file, literal.value) not in ALLOWED_LITERALS
                and not literal.file.startswith(CONTRACT_FOLDERS)]
    assert repeated == [], (
        "import these from pipeline.settings (or, where the literal is deliberate, add it to ALLOWED_LITERALS "
        "with the reason):\n" + "\n".join(repeated))


def test_every_allowed_literal_is_still_written_out() -> None:
    found = {(literal.file, literal.value) for literal in repeated_literals()}
    assert sorted(ALLOWED_LITERALS - found) == []


def test_every_contract_folder_still_pins_settings_values() -> None:
    pinned = {folder for folder in CONTRACT_FOLDERS for literal in repeated_literals()
              if literal.file.startswith(folder)}
    assert sorted(set(CONTRACT_FOLDERS) - pinned) == []


def test_the_literal_check_finds_a_settings_value_written_out() -> None:
    found = settings_literals('x = "MODEL_SIGNING_KEY"\n', "planted.py")

    assert found == [Literal("planted.py", 1, ENVIRONMENT.signing_key, ("ENVIRONMENT.signing_key",))]
    assert str(found[0]).startswith("planted.py:1: ") and str(found[0]).endswith(" is ENVIRONMENT.signing_key")


def test_the_literal_check_finds_an_f_strings_part_and_a_tuples_item_not_a_longer_string_or_a_comment() -> None:
    planted = ('# MODEL_SIGNING_KEY\n'
               'x = "set MODEL_SIGNING_KEY"\n'
               'y = f"{x}no_proxy"\n')

    found = settings_literals(planted, "planted.py")

    assert [(literal.line, literal.settings) for literal in found] == [(3, ("ENVIRONMENT.no_proxy_variables[1]",))]
