"""What every stage shares: the log format, the logger set-up and argument parsing."""
import argparse
import logging
import sys
import warnings
from typing import Any, NoReturn, Optional, Sequence, TextIO, Type, Union

from pipeline.settings import MESSAGES, S3

LOG_FORMAT = "%(asctime)s - %(levelname)s - %(module)s.%(funcName)s - %(message)s"

# Libraries that log every HTTP call at INFO would drown the stage's own story.
_QUIET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


def configure_logger(level: int = logging.INFO) -> logging.Logger:
    """Send all logging to stdout in the project's format.

    Idempotent: calling it again replaces the handler it installed before rather than
    adding a second one, so a stage never prints a line twice.

    Args:
        level: the root logger's level.

    Returns:
        The root logger.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_time_to_dispatch", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    setattr(handler, "_time_to_dispatch", True)
    root.addHandler(handler)
    root.setLevel(level)
    quiet_libraries()
    # A library's warning (e.g. boto3 announcing the end of Python 3.9 support) would otherwise
    # be two bare lines on stderr; as one log line it keeps the stage's output in one format.
    warnings.showwarning = _log_warning
    return root


def quiet_libraries() -> None:
    """Log only WARNING and above from the libraries that log every HTTP call at INFO."""
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _log_warning(
    message: Union[Warning, str],
    category: Type[Warning],
    filename: str,
    lineno: int,
    file: Optional[TextIO] = None,
    line: Optional[str] = None,
) -> None:
    logging.getLogger("py.warnings").warning(f"{category.__name__}: {message} ({filename}:{lineno})")


def quote(value: Any, limit: int = MESSAGES.quote_prefix_chars) -> str:
    """A value as a log line or an error quotes it: its repr, cut to a short prefix.

    A string longer than `limit` characters is shown as the repr of its first `limit`
    characters, then `...` and its length; other values are cut the same way on their repr.
    Lone surrogates and other unprintable characters come out escaped, so the result is
    always printable and encodable as UTF-8.

    Args:
        value: anything; strings are measured in characters, other values by their repr.
        limit: the most characters of the value quoted.

    Returns:
        For example `'SKU001'`, or `'xxxx...' ... (20000000 characters)`.
    """
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        shown = repr(text) if isinstance(value, str) else text
        return shown.encode("utf-8", "backslashreplace").decode("utf-8")
    prefix = repr(text[:limit]) if isinstance(value, str) else text[:limit]
    shown = f"{prefix}... ({len(text)} characters)"
    return shown.encode("utf-8", "backslashreplace").decode("utf-8")


def listed(items: Sequence[str], total: Optional[int] = None, limit: int = MESSAGES.max_codes_named) -> str:
    """Items as a log line or an error lists a set that may be large: the first `limit`, then
    how many more.

    Args:
        items: the items, each already as it should be shown (e.g. through `quote`); only the
            first `limit` are read, so a caller may pass just those.
        total: how many items there are, when `items` holds only the first ones.
        limit: the most items named.

    Returns:
        For example `'SKU001', 'SKU002'` or `P01, P02, P03, P04, P05 and 59995 more`.
    """
    named = list(items[:limit])
    more = (len(items) if total is None else total) - len(named)
    return ", ".join(named) + (f" and {more} more" if more > 0 else "")


class StageArgumentParser(argparse.ArgumentParser):
    """The parser of a stage's CLI: the S3 bucket first, then the stage's own arguments.

    It raises ValueError instead of printing and exiting with 2; the stage's CLI turns the
    ValueError into its one ERROR line and exit code 1.
    """

    def __init__(self, prog: str) -> None:
        super().__init__(prog=prog, add_help=False)
        self.add_argument("bucket")

    def parse_stage_args(self, argv: Sequence[str]) -> argparse.Namespace:
        """Parse `argv`; a bucket name of only whitespace is refused like any bad argument."""
        args = self.parse_args(list(argv))
        if not args.bucket.strip():
            raise ValueError("S3_BUCKET is empty")
        if len(args.bucket) > S3.max_bucket_name_chars:
            raise ValueError(
                f"S3_BUCKET {quote(args.bucket)} is longer than S3 allows a bucket's name "
                f"({S3.max_bucket_name_chars} characters)")
        return args

    def error(self, message: str) -> NoReturn:
        limit = MESSAGES.max_argument_error_chars
        if len(message) > limit:
            message = f"{message[:limit]}... ({len(message)} characters)"
        raise ValueError(message)
