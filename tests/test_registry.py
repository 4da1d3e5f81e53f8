"""The registry CLI, as an engineer runs it (subprocesses, over the local S3 server): list, show,
reject and restore, unknown and ambiguous models, a missing bucket, older models without a
report, and the serve stage picking the right model on its next start. The same command line
is also called in-process (`registry.CLI.main`), which returns the exit code."""
import http.client
import json
import subprocess
import sys
from typing import Any, Callable, Dict, List

import pytest

from pipeline import registry as registry_cli
from pipeline.artefact.model import Model
from pipeline.model_registry.records import list_status_changes
from pipeline.settings import API, LAYOUT, LOCAL
from pipeline.storage.layout import report_prefix
from pipeline.storage.signed_artefacts import get_model
from tests.helpers import (
    LOG_LINE,
    StartService,
    error_lines,
    models_created,
    run_cli,
    stop_service,
    wait_until_listening,
)

pytestmark = pytest.mark.e2e


def registry(bucket: str, env: Dict[str, str], *args: str) -> Any:
    return run_cli(["-m", "pipeline.registry", bucket, *args], env)


def model_line_statuses(stdout: str) -> List[List[str]]:
    """(id, status) of each model line of `list`, in order."""
    return [[line.split()[0], line.split()[3]] for line in stdout.splitlines()[1:]]


def served_version(start: StartService, bucket: str, env: Dict[str, str]) -> str:
    """Start the serve stage, return the model version it serves, stop it."""
    service = start(["-m", "pipeline.serve_model", bucket], env)
    wait_until_listening(service)
    conn = http.client.HTTPConnection(LOCAL.loopback_host, service.port, timeout=10)
    conn.request("GET", API.ready_path)
    version = json.loads(conn.getresponse().read())["model_version"]
    conn.close()
    assert stop_service(service) == 0
    return str(version)


@pytest.fixture
def three_models(s3: Any, bucket: str, trained_model: Model) -> List[Model]:
    """Models of 1, 8 and 15 October 2026; the two older ones made before reports existed."""
    older = models_created(bucket, trained_model, [1, 8], with_report=False)
    return older + models_created(bucket, trained_model, [15])


def test_list_shows_every_model_newest_first_with_its_status_and_metrics(
    s3_env: Dict[str, str], bucket: str, three_models: List[Model]
) -> None:
    result = registry(bucket, s3_env, "list")

    assert result.returncode == 0, result.stdout
    assert model_line_statuses(result.stdout) == [
        ["00000015", "live"], ["00000008", "superseded"], ["00000001", "superseded"]]
    newest = three_models[-1]
    assert result.stdout.splitlines()[1].split() == [
        "00000015", "2026-10-15", "12:00:00", "live", f"{newest.metrics.r_squared:.4f}",
        f"{newest.metrics.mean_absolute_error:.4f}", newest.dataset.key]


def test_a_copy_of_a_rejected_artefact_at_a_newer_key_is_listed_as_refused_with_a_warning_naming_the_remedy(
    s3: Any, s3_env: Dict[str, str], bucket: str, three_models: List[Model]
) -> None:
    newest = f"{LAYOUT.models_prefix}{LAYOUT.model_file_stem}_2026-10-15T12:00:00.000000Z_00000015.pkl"
    assert registry(bucket, s3_env, "reject", "00000015", "--reason", "late orders").returncode == 0
    replay = f"{LAYOUT.models_prefix}{LAYOUT.model_file_stem}_2026-10-20T12:00:00.000000Z_replay01.pkl"
    s3.copy_object(Bucket=bucket, Key=replay, MetadataDirective="COPY", CopySource={"Bucket": bucket, "Key": newest})

    listed = registry(bucket, s3_env, "list")
    shown = registry(bucket, s3_env, "show", "replay01")

    assert listed.returncode == 0, listed.stdout
    table = "\n".join(line for line in listed.stdout.splitlines() if not LOG_LINE.match(line))
    assert model_line_statuses(table)[:2] == [["replay01", "refused"], ["00000015", "rejected"]]
    assert "copied here from another key" in table.splitlines()[1]
    for result in (listed, shown):
        (warning,) = [line for line in result.stdout.splitlines() if " - WARNING - " in line]
        assert "model replay01 is the newest that is not rejected, but every stage refuses it" in warning
        assert f"python -m pipeline.registry {bucket} reject replay01" in warning
    assert "model replay01: refused" in shown.stdout.splitlines()


def test_reject_then_restore_round_trip_and_the_serve_stage_follows(
    s3: Any, s3_env: Dict[str, str], bucket: str, three_models: List[Model], start: StartService
) -> None:
    _, second, newest = three_models
    artefacts_before = s3.list_object_versions(Bucket=bucket, Prefix=LAYOUT.models_prefix)["Versions"]

    rejected = registry(bucket, s3_env, "reject", newest.artefact_id, "--reason", "dispatch times doubled")
    serving_after_reject = served_version(start, bucket, s3_env)
    restored = registry(bucket, s3_env, "restore", str(newest.artefact_key))
    serving_after_restore = served_version(start, bucket, s3_env)

    assert (rejected.returncode, restored.returncode) == (0, 0), rejected.stdout + restored.stdout
    assert f"live model now: s3://{bucket}/{second.artefact_key}" in rejected.stdout
    assert serving_after_reject == str(get_model(bucket, str(second.artefact_key)))
    assert serving_after_restore == str(get_model(bucket, str(newest.artefact_key)))
    history = list_status_changes(bucket)[str(newest.artefact_key)]
    assert [(c.action, c.reason) for c in history] == [("reject", "dispatch times doubled"), ("restore", "restored")]
    assert history[0].who.startswith("arn:aws:")  # the AWS identity, from STS
    assert s3.list_object_versions(Bucket=bucket, Prefix=LAYOUT.models_prefix)["Versions"] == artefacts_before


def test_a_rejected_model_is_listed_as_rejected(s3_env: Dict[str, str], bucket: str, three_models: List[Model]) -> None:
    registry(bucket, s3_env, "reject", "00000015", "--reason", "bad week")

    result = registry(bucket, s3_env, "list")

    assert model_line_statuses(result.stdout) == [
        ["00000015", "rejected"], ["00000008", "live"], ["00000001", "superseded"]]


def test_show_prints_lineage_report_location_and_history(
    s3_env: Dict[str, str], bucket: str, three_models: List[Model]
) -> None:
    newest = three_models[-1]
    registry(bucket, s3_env, "reject", "00000015", "--reason", "bad week")

    result = registry(bucket, s3_env, "show", "00000015")

    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert lines[:2] == ["model 00000015: rejected", f"artefact: s3://{bucket}/{newest.artefact_key}"]
    assert lines[2] == f"report: s3://{bucket}/{report_prefix(newest)} (report.html)"
    assert '"artefact_id": "00000015"' in result.stdout
    assert lines[-2] == "status history (1 change(s)):"
    assert lines[-1].endswith(" reject by arn:aws:sts::123456789012:user/moto: bad week")


def test_show_of_a_model_made_before_reports_says_it_has_none(
    s3_env: Dict[str, str], bucket: str, three_models: List[Model]
) -> None:
    result = registry(bucket, s3_env, "show", "00000001")

    assert result.returncode == 0, result.stdout
    assert "report: none (the model was made before reports existed)" in result.stdout.splitlines()


def test_the_serve_stage_starts_on_a_model_without_a_report_and_answers_404(
    s3: Any, s3_env: Dict[str, str], bucket: str, three_models: List[Model], start: StartService
) -> None:
    registry(bucket, s3_env, "reject", "00000015", "--reason", "bad week")
    service = start(["-m", "pipeline.serve_model", bucket], s3_env)
    wait_until_listening(service)

    conn = http.client.HTTPConnection(LOCAL.loopback_host, service.port, timeout=10)
    conn.request("GET", API.model_report_path)
    response = conn.getresponse()

    assert (response.status, json.loads(response.read())) == (
        404, {"detail": "model 00000008 has no report (made before reports existed)"})
    assert stop_service(service) == 0


@pytest.mark.parametrize("args, message", [
    (["show", "ffffffff"], "MODEL 'ffffffff' is not an artefact id or key in s3://{bucket}/models/ (3 model(s)"),
    (["reject", "models/nope.pkl", "--reason", "x"], "MODEL 'models/nope.pkl' is not an artefact id or key"),
    (["show", "000000"], "MODEL '000000' is ambiguous in s3://{bucket}/models/: it matches 3 artefacts"),
    (["restore", "00000015"], "model 00000015 is not rejected (it is live); nothing to restore"),
])
def test_unknown_ambiguous_or_pointless_is_one_error_and_exit_1(
    s3_env: Dict[str, str], bucket: str, three_models: List[Model], args: List[str], message: str
) -> None:
    result = registry(bucket, s3_env, *args)

    assert result.returncode == 1
    [line] = error_lines(result.stdout)
    assert message.format(bucket=bucket) in line
    assert list_status_changes(bucket) == {}


def test_a_missing_bucket_is_one_error_and_exit_1(s3_env: Dict[str, str]) -> None:
    result = registry("ttd-no-such-bucket", s3_env, "list")

    assert result.returncode == 1
    [line] = error_lines(result.stdout)
    assert "s3://ttd-no-such-bucket: bucket does not exist" in line


@pytest.mark.parametrize("args, reason", [
    ([], "the following arguments are required: command"),
    (["drop"], "invalid choice: 'drop'"),
    (["reject", "00000015"], "reject needs --reason TEXT"),
    (["show"], "show needs a MODEL"),
])
def test_bad_arguments_are_one_error_with_the_usage(s3_env: Dict[str, str], args: List[str], reason: str) -> None:
    result = registry("some-bucket", s3_env, *args)

    assert result.returncode == 1
    [line] = error_lines(result.stdout)
    assert "Invalid arguments passed to registry.py" in line and reason in line and "usage:" in line


# --- the same command line, in-process ------------------------------------------------------

def test_main_in_process_lists_the_models_and_returns_0(
    s3_env: Dict[str, str], bucket: str, three_models: List[Model], cli_output: Callable[[], List[str]]
) -> None:
    assert registry_cli.CLI.main([bucket, "list"]) == 0

    printed = "\n".join(line for line in cli_output() if not LOG_LINE.match(line))
    assert model_line_statuses(printed) == [
        ["00000015", "live"], ["00000008", "superseded"], ["00000001", "superseded"]]


def test_main_in_process_with_an_unknown_model_returns_1_with_one_error_line_naming_the_command(
    s3_env: Dict[str, str], bucket: str, three_models: List[Model], cli_output: Callable[[], List[str]]
) -> None:
    assert registry_cli.CLI.main([bucket, "show", "feedbeef"]) == 1

    [line] = error_lines("\n".join(cli_output()))
    assert " - registry show failed: " in line and "feedbeef" in line


# --- a long argument is quoted cut short, in every line ---------------------------------------

def test_a_100_kb_model_argument_is_quoted_cut_short_in_the_error_line(
    s3_env: Dict[str, str], bucket: str, three_models: List[Model]
) -> None:
    result = registry(bucket, s3_env, "show", "m" * 100_000)

    assert result.returncode == 1
    [line] = error_lines(result.stdout)
    assert "MODEL 'mmmm" in line and "... (100000 characters) is not an artefact id or key" in line
    assert len(line) < 2_000


def test_a_100_kb_reason_is_quoted_cut_short_in_every_log_line(
    s3_env: Dict[str, str], bucket: str, three_models: List[Model]
) -> None:
    reason = "r" * 100_000
    rejected = registry(bucket, s3_env, "reject", "00000015", "--reason", reason)
    again = registry(bucket, s3_env, "reject", "00000015", "--reason", reason)

    assert (rejected.returncode, again.returncode) == (0, 1)
    assert "... (100000 characters)" in rejected.stdout
    [line] = error_lines(again.stdout)
    assert "model 00000015 is already rejected ('rrrr" in line
    assert max(len(line) for line in (rejected.stdout + again.stdout).splitlines()) < 2_000
    assert [c.reason for c in list_status_changes(bucket)[str(three_models[-1].artefact_key)]] == [reason]


def test_eight_concurrent_rejects_record_one_change_and_the_others_exit_1_with_one_error_line(
    s3: Any, s3_env: Dict[str, str], bucket: str, trained_model: Model
) -> None:
    [model] = models_created(bucket, trained_model, [1])
    key = model.artefact_key
    command = [sys.executable, "-m", "pipeline.registry", bucket, "reject", model.artefact_id, "--reason", "r"]
    processes = [subprocess.Popen(command, env=s3_env, cwd=LOCAL.repo_root, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(8)]
    outputs = [process.communicate(timeout=120)[0] for process in processes]

    assert len(list_status_changes(bucket)[key]) == 1
    assert sorted(process.returncode for process in processes) == [0] + [1] * 7, outputs
    for process, output in zip(processes, outputs):
        assert len(error_lines(output)) == (process.returncode == 1)
