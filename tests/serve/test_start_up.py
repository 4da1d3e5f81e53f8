"""The serve stage's arguments: each bad one refused with its reason, and the defaults."""
from typing import List

import pytest

from pipeline.serve.start_up import parse_args
from pipeline.settings import SERVE


@pytest.mark.parametrize(
    "args, reason",
    [
        ([], "the following arguments are required: bucket"),
        (["bucket-a", "bucket-b"], "unrecognized arguments: bucket-b"),
        (["bucket-a", "--port", "eighty"], "argument --port: invalid int value: 'eighty'"),
        (["bucket-a", "--port", "0"], "--port must be in 1..65535, got 0"),
        (["bucket-a", "--port", "70000"], "--port must be in 1..65535, got 70000"),
        (["bucket-a", "--host", ""], "--host is empty"),
        (["bucket-a", "--workers", "2"], "unrecognized arguments: --workers 2"),
        (["bucket-a", "--server-stack", "fast"],
         "argument --server-stack: invalid choice: 'fast' (choose from 'auto', 'pure-python')"),
        (["  "], "S3_BUCKET is empty"),
        (["bucket-a", "--drain-seconds", "-1"], "--drain-seconds must be in 0..8, got -1"),
        (["bucket-a", "--drain-seconds", "9"], "--drain-seconds must be in 0..8, got 9"),
        (["bucket-a", "--drain-seconds", "nan"], "--drain-seconds must be in 0..8, got nan"),
        (["bucket-a", "--drain-seconds", "soon"], "argument --drain-seconds: invalid float value: 'soon'"),
    ],
)
def test_bad_arguments_are_refused_with_the_reason(args: List[str], reason: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_args(args)

    assert str(refused.value) == reason


def test_listens_on_all_interfaces_port_8000_by_default() -> None:
    args = parse_args(["bucket-a"])

    assert (args.host, args.port, args.access_log, args.server_stack) == (
        SERVE.default_host, SERVE.default_port, False, "auto")
    assert (SERVE.default_host, SERVE.default_port) == ("0.0.0.0", 8000)
