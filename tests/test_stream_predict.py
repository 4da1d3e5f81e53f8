"""The stream stage's command line: one ERROR line and exit code 1 for each failure it names,
run as a real process against streams and a bucket on the local server over HTTP."""
from typing import Any, Dict

import pytest

from pipeline.settings import LAYOUT, LOCAL
from pipeline.streaming.output import kinesis_client
from tests.helpers import (
    LOG_LINE,
    StartService,
    create_stream,
    error_lines,
    free_port,
    run_cli,
    stop_service,
    wait_until_listening,
)


@pytest.fixture
def kinesis(s3_env: Dict[str, str]) -> Any:
    return kinesis_client()


def stream_predict(bucket: str, input_stream: str, output_stream: str, env: Dict[str, str]) -> Any:
    return run_cli(["-m", "pipeline.stream_predict", bucket, "--input-stream", input_stream, "--output-stream",
                    output_stream, "--host", LOCAL.loopback_host, "--port", str(free_port())], env)


@pytest.mark.e2e
def test_no_live_model_is_one_error_line_and_exit_code_1(
    kinesis: Any, bucket: str, s3_env: Dict[str, str],
) -> None:
    result = stream_predict(bucket, create_stream(kinesis), create_stream(kinesis), s3_env)

    assert result.returncode == 1
    [line] = error_lines(result.stdout)
    assert f"stream_predict failed: s3://{bucket}/models/: no .pkl object with a timestamp in its key" in line
    assert all(LOG_LINE.match(line) for line in result.stdout.splitlines())


@pytest.mark.e2e
def test_a_missing_input_stream_is_one_error_line_naming_it(
    kinesis: Any, bucket_with_model: str, s3_env: Dict[str, str],
) -> None:
    result = stream_predict(bucket_with_model, "no-such-stream", create_stream(kinesis), s3_env)

    assert result.returncode == 1
    [line] = error_lines(result.stdout)
    assert "stream_predict failed: cannot list the shards of the input stream 'no-such-stream': " \
           "ResourceNotFoundException" in line


@pytest.mark.e2e
def test_a_bad_argument_is_one_error_line_with_the_usage(s3_env: Dict[str, str]) -> None:
    result = run_cli(["-m", "pipeline.stream_predict", "bucket", "--input-stream", "orders"], s3_env)

    assert result.returncode == 1
    [line] = error_lines(result.stdout)
    assert "Invalid arguments passed to stream_predict.py: the following arguments are required: --output-stream; " \
           "usage: python -m pipeline.stream_predict S3_BUCKET --input-stream NAME --output-stream NAME" in line


@pytest.mark.e2e
def test_a_missing_output_stream_is_one_error_line_naming_it_and_no_checkpoint(
    s3: Any, kinesis: Any, bucket_with_model: str, s3_env: Dict[str, str],
) -> None:
    input_stream = create_stream(kinesis)
    kinesis.put_record(StreamName=input_stream, PartitionKey="ORD-1",
                       Data=b'{"order_id": "ORD-1", "product_code": "SKU001", "orders_placed": 12}')

    result = stream_predict(bucket_with_model, input_stream, "no-such-output", s3_env)

    assert result.returncode == 1
    [line] = error_lines(result.stdout)
    assert "stream_predict failed: " in line and "no-such-output" in line
    assert s3.list_objects_v2(Bucket=bucket_with_model, Prefix=LAYOUT.stream_checkpoints_prefix)["KeyCount"] == 0


@pytest.mark.e2e
def test_sigterm_while_it_starts_exits_0_with_no_error_line(
    kinesis: Any, bucket_with_model: str, s3_env: Dict[str, str], start: StartService,
) -> None:
    consumer = start(["-m", "pipeline.stream_predict", bucket_with_model, "--input-stream", create_stream(kinesis),
                      "--output-stream", create_stream(kinesis)], s3_env)
    wait_until_listening(consumer)

    code = stop_service(consumer)

    assert code == 0
    assert error_lines(consumer.log()) == []
    last = consumer.log().splitlines()[-1]
    assert last.endswith("stream_predict stopped by SIGTERM before it read any shard") \
        or last.endswith("stream_predict stopped as asked")
