"""The entry points' command-line runner (pipeline/cli.py): every way a command ends is at most
one log line, in the project's format, naming the entry point's module and function, and an
exit code that `CommandLine.main` returns.

The lines are read as a process prints them (stdout through the project's log format), so the
checks are on the exact bytes apart from the time: docs/api.md, docs/governance.md and
docs/changelog.md quote them, and operators search logs for them.
"""
import logging
import re
import sys
from typing import Any, Callable, Dict, List, Sequence

import pytest

from pipeline import registry, run_local, score_batch, serve_model, train_model
from pipeline.batch.jobs import USAGE as SCORE_BATCH_USAGE
from pipeline.cli import CommandLine, Failures
from pipeline.model_registry.operations import USAGE as REGISTRY_USAGE
from pipeline.serve.start_up import USAGE as SERVE_USAGE
from pipeline.train.stage import USAGE as TRAIN_USAGE
from pipeline.settings import ENVIRONMENT, LOCAL
from tests.helpers import run_cli

CliOutput = Callable[[], List[str]]
USAGE = "usage: python -m pipeline.entry THING"


def exact_line(level: str, where: str, message: str) -> "re.Pattern[str]":
    """One log line in the project's format with any time, and exactly these other fields."""
    time = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}"
    return re.compile(f"^{time} - {level} - {re.escape(where)} - {re.escape(message)}$")


def assert_one_line(lines: List[str], level: str, where: str, message: str) -> None:
    assert len(lines) == 1, lines
    assert exact_line(level, where, message).match(lines[0]), lines[0]


class Documented(Exception):
    """A failure the command documents."""


class DocumentedToo(Documented):
    """A failure two of the command's `Failures` match."""


class Stopped(BaseException):
    """A stop asked for, like a signal's."""


def parse(argv: Sequence[str]) -> List[str]:
    if list(argv[:1]) == ["bad"]:
        raise ValueError("one argument too many")
    return list(argv)


def raising(error: BaseException) -> Callable[[List[str]], None]:
    def run(arguments: List[str]) -> None:
        raise error
    return run


def command(run: Callable[[List[str]], object] = lambda arguments: None, **options: Any) -> CommandLine[List[str]]:
    settings: Dict[str, Any] = {
        "usage": USAGE,
        "failures": [Failures((DocumentedToo,), "the second reason: "), Failures((Documented,)),
                     Failures((UnicodeDecodeError,), "the input is not UTF-8 text: ")],
        "stops": (Stopped,),
        "stopped": lambda stop: f"{stop} before anything ran",
        **options,
    }
    return CommandLine("entry", parse, run, **settings)


# --- every ending: its exit code and its one line ------------------------------------------

def test_a_command_that_runs_to_its_end_exits_0_and_logs_nothing(cli_output: CliOutput) -> None:
    ran: List[List[str]] = []

    assert command(ran.append).main(["bucket"]) == 0

    assert ran == [["bucket"]]
    assert cli_output() == []


def test_a_command_with_a_closing_line_logs_it_at_info_and_exits_0(cli_output: CliOutput) -> None:
    assert command(done="stopped; nothing left running").main([]) == 0

    assert_one_line(cli_output(), "INFO", "test_cli.test_a_command_with_a_closing_line_logs_it_at_info_and_exits_0",
                    "stopped; nothing left running")


def test_bad_arguments_are_one_error_line_with_the_usage_and_exit_1(cli_output: CliOutput) -> None:
    ran: List[List[str]] = []

    assert command(ran.append).main(["bad"]) == 1

    assert ran == []
    assert_one_line(cli_output(), "ERROR", "test_cli.test_bad_arguments_are_one_error_line_with_the_usage_and_exit_1",
                    f"Invalid arguments passed to entry.py: one argument too many; {USAGE}")


def test_bad_arguments_of_a_command_without_a_usage_name_no_usage(cli_output: CliOutput) -> None:
    assert command(usage=None).main(["bad"]) == 1

    assert_one_line(cli_output(), "ERROR", "test_cli.test_bad_arguments_of_a_command_without_a_usage_name_no_usage",
                    "Invalid arguments passed to entry.py: one argument too many")


def test_a_failed_check_is_its_own_error_line_and_exit_1_before_anything_runs(cli_output: CliOutput) -> None:
    ran: List[List[str]] = []

    assert command(ran.append, check=lambda arguments: f"entry cannot run {arguments}").main(["here"]) == 1

    assert ran == []
    assert_one_line(cli_output(), "ERROR",
                    "test_cli.test_a_failed_check_is_its_own_error_line_and_exit_1_before_anything_runs",
                    "entry cannot run ['here']")


def test_a_passed_check_lets_the_command_run(cli_output: CliOutput) -> None:
    ran: List[List[str]] = []

    assert command(ran.append, check=lambda arguments: None).main(["here"]) == 0

    assert ran == [["here"]]
    assert cli_output() == []


def test_a_documented_failure_is_one_error_line_saying_why_and_exit_1(cli_output: CliOutput) -> None:
    assert command(raising(Documented("s3://b: bucket does not exist"))).main([]) == 1

    assert_one_line(cli_output(), "ERROR", "test_cli.test_a_documented_failure_is_one_error_line_saying_why_and_exit_1",
                    "entry failed: s3://b: bucket does not exist")


def test_a_documented_failure_with_an_explanation_says_it_before_the_error(cli_output: CliOutput) -> None:
    error = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    assert command(raising(error)).main([]) == 1

    assert_one_line(cli_output(), "ERROR",
                    "test_cli.test_a_documented_failure_with_an_explanation_says_it_before_the_error",
                    "entry failed: the input is not UTF-8 text: "
                    "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte")


def test_the_first_failures_that_match_explain(cli_output: CliOutput) -> None:
    assert command(raising(DocumentedToo("why"))).main([]) == 1

    assert_one_line(cli_output(), "ERROR", "test_cli.test_the_first_failures_that_match_explain",
                    "entry failed: the second reason: why")


def test_an_unforeseen_exception_is_one_error_line_with_its_repr_and_exit_1(cli_output: CliOutput) -> None:
    assert command(raising(KeyError("product_code"))).main([]) == 1

    assert_one_line(cli_output(), "ERROR",
                    "test_cli.test_an_unforeseen_exception_is_one_error_line_with_its_repr_and_exit_1",
                    "entry failed unexpectedly: KeyError('product_code')")


def test_a_failure_names_what_failed_from_the_arguments(cli_output: CliOutput) -> None:
    failing = command(raising(Documented("MODEL 'feedbeef' is not an artefact id or key")),
                      what=lambda arguments: f"registry {arguments[0]}")
    unforeseen = command(raising(RuntimeError("boom")), what=lambda arguments: f"registry {arguments[0]}")

    assert failing.main(["show"]) == 1
    assert unforeseen.main(["list"]) == 1

    where = "test_cli.test_a_failure_names_what_failed_from_the_arguments"
    first, second = cli_output()
    unknown = "registry show failed: MODEL 'feedbeef' is not an artefact id or key"
    assert exact_line("ERROR", where, unknown).match(first)
    assert exact_line("ERROR", where, "registry list failed unexpectedly: RuntimeError('boom')").match(second)


def test_a_stop_asked_for_is_one_info_line_and_exit_0(cli_output: CliOutput) -> None:
    assert command(raising(Stopped("SIGTERM"))).main([]) == 0

    assert_one_line(cli_output(), "INFO", "test_cli.test_a_stop_asked_for_is_one_info_line_and_exit_0",
                    "SIGTERM before anything ran")


def test_a_base_exception_that_is_no_stop_of_the_command_passes_through(cli_output: CliOutput) -> None:
    with pytest.raises(KeyboardInterrupt):
        command(raising(KeyboardInterrupt())).main([])

    assert cli_output() == []


def test_main_without_configuring_logging_leaves_the_records_to_the_caller(
    caplog: pytest.LogCaptureFixture, cli_output: CliOutput
) -> None:
    with caplog.at_level(logging.INFO):
        assert command(raising(Documented("why"))).main([], configure_logging=False) == 1

    assert cli_output() == []
    [record] = caplog.records
    assert (record.levelname, record.module, record.funcName, record.getMessage()) == (
        "ERROR", "test_cli", "test_main_without_configuring_logging_leaves_the_records_to_the_caller",
        "entry failed: why")


def test_called_from_a_modules_main_block_the_line_names_the_module_and_module_level(
    caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    # As `python -m pipeline.train_model` runs it: `main` called at module level of a file.
    entry = tmp_path / "some_entry.py"
    code = compile("exit_code = CLI.main(['bad'], configure_logging=False)", str(entry), "exec")
    namespace: Dict[str, Any] = {"CLI": command()}

    with caplog.at_level(logging.INFO):
        exec(code, namespace)

    assert namespace["exit_code"] == 1
    [record] = caplog.records
    assert f"{record.module}.{record.funcName}" == "some_entry.<module>"


# --- the five entry points: their bad-arguments lines, exactly -------------------------------

ENTRY_POINTS = [
    ("train_model", train_model.CLI.main, ["bucket", "high", "0.8"],
     f"argument error_threshold: invalid float value: 'high'; {TRAIN_USAGE}"),
    ("serve_model", serve_model.CLI.main, ["bucket", "--port", "x"],
     f"argument --port: invalid int value: 'x'; {SERVE_USAGE}"),
    ("score_batch", score_batch.CLI.main, ["bucket", "--backfill", "--since", "nope"],
     f"not an ISO-8601 date or date-time: 'nope'; {SCORE_BATCH_USAGE}"),
    ("registry", registry.CLI.main, ["bucket", "frobnicate"],
     "argument command: invalid choice: 'frobnicate' (choose from 'list', 'show', 'reject', 'restore', "
     "'track-history'); "
     f"{REGISTRY_USAGE}"),
    ("run_local", run_local.cli, ["--weeks", "x"], "argument --weeks: invalid int value: 'x'"),
]


@pytest.mark.parametrize("name, main, argv, why", ENTRY_POINTS, ids=[entry[0] for entry in ENTRY_POINTS])
def test_entry_point_in_process_with_bad_arguments_returns_1_with_one_error_line(
    cli_output: CliOutput, name: str, main: Callable[[List[str]], int], argv: List[str], why: str
) -> None:
    assert main(argv) == 1

    # run_local's runner is called from its `cli` function; the others' from the caller's.
    where = "run_local.cli" if name == "run_local" else \
        "test_cli.test_entry_point_in_process_with_bad_arguments_returns_1_with_one_error_line"
    assert_one_line(cli_output(), "ERROR", where, f"Invalid arguments passed to {name}.py: {why}")


@pytest.mark.e2e
@pytest.mark.parametrize("name, main, argv, why", ENTRY_POINTS, ids=[entry[0] for entry in ENTRY_POINTS])
def test_entry_point_with_bad_arguments_prints_the_one_error_line_naming_the_entry_module(
    name: str, main: Callable[[List[str]], int], argv: List[str], why: str
) -> None:
    env = {"PATH": "/usr/bin:/bin", ENVIRONMENT.python_path: str(LOCAL.repo_root)}
    result = run_cli(["-m", f"pipeline.{name}", *argv], env)

    assert result.returncode == 1
    assert result.stderr == ""
    where = "run_local.cli" if name == "run_local" else f"{name}.<module>"
    assert_one_line(result.stdout.splitlines(), "ERROR", where, f"Invalid arguments passed to {name}.py: {why}")


def test_run_local_checks_the_python_version_after_parsing() -> None:
    # The check's line is logged before the pinned requirements are needed; on this Python it passes.
    assert sys.version_info >= (3, 11)
    assert run_local.python_too_old(run_local.parse_args([])) is None
