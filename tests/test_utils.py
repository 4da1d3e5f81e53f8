"""What every stage shares: the log format, the logger set-up and the stage argument parser."""
import logging
import re
from typing import Iterator, List

import pytest

from pipeline.settings import MESSAGES, S3
from pipeline.utils import LOG_FORMAT, StageArgumentParser, configure_logger, quote


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configure_logger_writes_the_project_format_to_stdout_once(
    capsys: pytest.CaptureFixture, restore_root_logger: None
) -> None:
    configure_logger()
    configure_logger()

    logging.getLogger("pipeline.example").info("hello")

    lines = capsys.readouterr().out.splitlines()
    assert LOG_FORMAT == "%(asctime)s - %(levelname)s - %(module)s.%(funcName)s - %(message)s"
    assert len([line for line in lines if line.endswith("hello")]) == 1
    assert re.match(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} - INFO - test_utils\."
                    r"test_configure_logger_writes_the_project_format_to_stdout_once - hello$", lines[-1])


def test_configure_logger_turns_a_library_warning_into_one_log_line(
    capsys: pytest.CaptureFixture, restore_root_logger: None
) -> None:
    import warnings

    previous = warnings.showwarning
    try:
        configure_logger()
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("Python 3.9 is no longer supported", DeprecationWarning)
    finally:
        warnings.showwarning = previous

    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if "no longer supported" in line]
    assert len(lines) == 1
    assert re.match(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} - WARNING - utils\._log_warning - "
                    r"DeprecationWarning: Python 3.9 is no longer supported \(.*test_utils.py:\d+\)$",
                    lines[0])
    assert captured.err == ""


def test_stage_argument_parser_reads_the_bucket_first() -> None:
    parser = StageArgumentParser(prog="stage.py")
    parser.add_argument("--flag", action="store_true")

    args = parser.parse_stage_args(["my-bucket", "--flag"])

    assert (args.bucket, args.flag) == ("my-bucket", True)


@pytest.mark.parametrize(
    "argv, reason",
    [([], "the following arguments are required: bucket"), (["   "], "S3_BUCKET is empty"),
     (["bucket", "--nope"], "unrecognized arguments: --nope")],
)
def test_stage_argument_parser_raises_value_error_with_the_reason(argv: List[str], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        StageArgumentParser(prog="stage.py").parse_stage_args(argv)


def test_stage_argument_parser_refuses_a_bucket_name_longer_than_s3_allows_quoting_it_cut_short() -> None:
    assert StageArgumentParser(prog="stage.py").parse_stage_args(["b" * S3.max_bucket_name_chars]).bucket

    with pytest.raises(ValueError, match="longer than S3 allows") as raised:
        StageArgumentParser(prog="stage.py").parse_stage_args(["b" * 100_000])

    assert len(str(raised.value)) < 300


def test_stage_argument_parser_cuts_argparses_own_message_about_a_100_kb_argument() -> None:
    with pytest.raises(ValueError, match="unrecognized arguments") as raised:
        StageArgumentParser(prog="stage.py").parse_stage_args(["bucket", "--" + "x" * 100_000])

    message = str(raised.value)
    assert len(message) < MESSAGES.max_argument_error_chars + 50
    assert message.endswith(" characters)")


def test_quote_shows_a_short_value_whole() -> None:
    assert quote("SKU001") == "'SKU001'"


def test_quote_cuts_a_long_value_to_a_prefix_and_says_its_length() -> None:
    assert quote("x" * 20_000_000) == f"{'x' * 100!r}... (20000000 characters)"


def test_quote_escapes_a_lone_surrogate_so_the_line_can_be_written() -> None:
    assert quote("\ud800").encode("utf-8") == b"'\\ud800'"
