"""Batch scoring's two jobs in order: a file of orders from S3 to S3 with the live model (or
the one named), and the backfill of every past week with the model live then.

`parse_args` reads the command line of both; `pipeline/score_batch.py` wires them and maps
failures to the exit code.
"""
import argparse
import logging
import math
import signal
from types import FrameType
from typing import Optional, Sequence

from pipeline.batch.backfill import BackfillResult, parse_date, run_backfill
from pipeline.batch.scoring import ScoringError, ScoringSummary, check_keys_apart, score_object
from pipeline.model_registry.live_model import live_model_object, resolve_model_key
from pipeline.model_registry.records import rejected_model_keys
from pipeline.settings import BATCH, LAYOUT, S3
from pipeline.storage.signed_artefacts import get_model
from pipeline.utils import StageArgumentParser, quote

USAGE = (
    "usage: python -m pipeline.score_batch BUCKET INPUT_KEY OUTPUT_KEY [--model MODEL] "
    "[--max-reject-fraction F] | python -m pipeline.score_batch BUCKET --backfill "
    "[--since DATE] [--until DATE] [--max-reject-fraction F] (F in [0, 1], DATE ISO-8601)"
)

# The exit code of a run stopped by SIGTERM: the shell's 128 + 15, as when the signal killed
# the process before; non-zero, so that Kubernetes counts the run as failed and retries it.
STOP_EXIT_CODE = 128 + signal.SIGTERM

log = logging.getLogger(__name__)


class StopRequested(BaseException):
    """SIGTERM arrived: raised in the main thread by the handler `stop_on_sigterm` installs, so
    that the multipart uploads are aborted on the way out (a BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way, botocore's retries included,
    swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} before it finished: the uploads were "
                         "aborted and nothing was written")


def stop_on_sigterm() -> None:
    """From now on SIGTERM raises StopRequested in the main thread; a second SIGTERM is ignored,
    so that it cannot interrupt the aborts the first one started."""
    signal.signal(signal.SIGTERM, _raise_stop_requested)


def _raise_stop_requested(signum: int, frame: Optional[FrameType]) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise StopRequested(signum)


def score_file(
    bucket: str,
    input_key: str,
    output_key: str,
    model_name: Optional[str] = None,
    max_reject_fraction: float = BATCH.default_max_reject_fraction,
) -> ScoringSummary:
    """Score one object into another with the live model or the one named.

    Raises:
        StorageError: S3 failed, no model to use, or MODEL is unknown or ambiguous.
        ScoringError: the input cannot be scored, or too many rows were rejected.
        UnicodeDecodeError: the input is not UTF-8 text.
    """
    key = resolve_model_key(bucket, model_name) if model_name else live_model_object(bucket).key
    if model_name and key in rejected_model_keys(bucket):
        log.warning(f"s3://{bucket}/{key} is rejected; using it because --model names it")
    model = get_model(bucket, key)
    log.info(f"scoring with model {model.artefact_id} ({model}) from s3://{bucket}/{key}")
    return score_object(bucket, input_key, output_key, model, max_reject_fraction)


def backfill_weeks(
    bucket: str,
    since: Optional[str] = None,
    until: Optional[str] = None,
    max_reject_fraction: float = BATCH.default_max_reject_fraction,
) -> BackfillResult:
    """Score every week from `since` to `until` (ISO dates, both included) with its live model.

    Raises:
        BackfillError: some weeks failed; StorageError: S3 failed.
    """
    return run_backfill(
        bucket,
        parse_date(since) if since else None,
        parse_date(until, end_of_day=True) if until else None,
        max_reject_fraction,
    )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the CLI arguments.

    Raises:
        ValueError: with the reason, for any bad argument.
    """
    parser = StageArgumentParser(prog="score_batch.py")
    parser.add_argument("input_key", nargs="?")
    parser.add_argument("output_key", nargs="?")
    parser.add_argument("--model")
    parser.add_argument("--max-reject-fraction", type=float, default=BATCH.default_max_reject_fraction)
    parser.add_argument("--backfill", action="store_true")
    parser.add_argument("--since")
    parser.add_argument("--until")
    args = parser.parse_stage_args(argv)
    fraction = args.max_reject_fraction
    if not (math.isfinite(fraction) and 0 <= fraction <= 1):
        raise ValueError(f"--max-reject-fraction must be in [0, 1], got {fraction}")
    if args.backfill:
        if args.input_key or args.output_key or args.model:
            raise ValueError("--backfill takes no INPUT_KEY, OUTPUT_KEY or --model: each week uses its live model")
        since = parse_date(args.since) if args.since else None
        until = parse_date(args.until, end_of_day=True) if args.until else None
        if since and until and since >= until:
            raise ValueError(f"--since {args.since} is not before --until {args.until}")
        return args
    if args.since or args.until:
        raise ValueError("--since and --until go with --backfill")
    if not (args.input_key and args.output_key and args.input_key.strip() and args.output_key.strip()):
        raise ValueError("INPUT_KEY and OUTPUT_KEY are both needed (or --backfill)")
    for name, key in (("INPUT_KEY", args.input_key), ("OUTPUT_KEY", args.output_key)):
        if len(key.encode("utf-8", "surrogatepass")) > S3.max_key_bytes:
            raise ValueError(f"{name} {quote(key)} is longer than S3 allows a key ({S3.max_key_bytes} bytes)")
    try:
        check_keys_apart(args.input_key, args.output_key)
    except ScoringError as error:
        raise ValueError(str(error)) from None
    check_output_not_reserved(args.output_key)
    return args


def check_output_not_reserved(output_key: str) -> None:
    """Refuse an OUTPUT_KEY (and with it its rejects key) under a prefix where the pipeline keeps
    its own objects (LAYOUT.reserved_prefixes): a batch output there could replace a report the
    service serves as HTML, a week's predictions the backfill trusts, or a dataset.

    Raises:
        ValueError: naming the prefix and every reserved prefix.
    """
    for prefix in LAYOUT.reserved_prefixes:
        if output_key.startswith(prefix):
            raise ValueError(
                f"OUTPUT_KEY {quote(output_key)} is under {prefix}, one of the prefixes that hold the pipeline's own "
                f"objects ({', '.join(LAYOUT.reserved_prefixes)}); batch output goes elsewhere")
