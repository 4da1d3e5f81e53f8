"""Batch scoring: a CSV of orders in, the same rows with the model's estimate out, in chunks.

The input needs at least the columns `orders_placed` and `product_code`; every other column
is kept, values and order unchanged, and the prediction's fields are added last:
`est_hours_to_dispatch`, `upper_hours_to_dispatch` (empty for a model without an upper bound)
and `extrapolated` (`true` or `false`). Rows are read
and scored `chunk_rows` at a time, so memory does not grow with the file. A row that cannot
be scored is never dropped silently: it becomes a reject (its line number, the reason and the
original row) and is written to the rejects CSV. The estimates are the service's exactly:
`Model.estimate`, as the API's batch route calls it, printed as the shortest text that reads
back as the same float (what the API's JSON holds), the flag as JSON writes it.

    line,reason,row
    7,orders_placed is negative: '-3',"2021-07-01,-3,SKU001"

`score_object` runs it from one S3 object to another (streamed in, multipart out). For the
backfill, `BacktestAccumulator` measures the estimates against a label column as they pass.
"""
import csv
import io
import itertools
import operator
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, TextIO, Tuple

import numpy as np

from pipeline.artefact.features import LABEL_COLUMN, ORDERS_COLUMN, PRODUCT_COLUMN
from pipeline.artefact.model import Estimates, Model
from pipeline.settings import ARTEFACT, BATCH, LAYOUT, MESSAGES
from pipeline.storage.client import delete_object
from pipeline.storage.multipart import MultipartWriter, open_object_stream
from pipeline.utils import listed, quote

ESTIMATE_COLUMN = "est_hours_to_dispatch"
UPPER_COLUMN = "upper_hours_to_dispatch"
EXTRAPOLATED_COLUMN = "extrapolated"
# What scoring adds to every row, in this order: the prediction's fields besides model_version.
OUTPUT_COLUMNS = (ESTIMATE_COLUMN, UPPER_COLUMN, EXTRAPOLATED_COLUMN)
REJECT_COLUMNS = ("line", "reason", "row")
# The extrapolated flag as JSON writes it, so that a CSV reader and the API's client read the same.
_FLAG_TEXT = {True: "true", False: "false"}

log = logging.getLogger(__name__)


class ScoringError(ValueError):
    """The input cannot be scored as a whole (no header, missing columns, too many rejects)."""


class RejectFractionError(ScoringError):
    """More rows were rejected than the allowed fraction."""


class Reject(NamedTuple):
    """A row that could not be scored: where it is, why, and what it held."""

    line: int
    reason: str
    fields: List[str]


class ScoredChunk(NamedTuple):
    """A chunk of the input: the scorable rows with their estimates, the rejects, and the
    scored rows' output as CSV text (the row, then the prediction's fields)."""

    rows: List[List[str]]
    product_codes: List[str]
    estimates: np.ndarray
    upper: Optional[np.ndarray]
    extrapolated: np.ndarray
    rejects: List[Reject]
    output: str


@dataclass
class ScoringSummary:
    """What a scoring run did: rows read, scored and rejected, and why."""

    rows: int = 0
    scored: int = 0
    reasons: Counter = field(default_factory=Counter)
    first_reject_lines: List[int] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return self.rows - self.scored

    @property
    def reject_fraction(self) -> float:
        return self.rejected / self.rows if self.rows else 0.0

    def add(self, chunk: ScoredChunk) -> None:
        self.rows += len(chunk.rows) + len(chunk.rejects)
        self.scored += len(chunk.rows)
        for reject in chunk.rejects:
            self.reasons[reject.reason.split(":", 1)[0]] += 1
            if len(self.first_reject_lines) < 5:
                self.first_reject_lines.append(reject.line)

    def describe_rejects(self) -> str:
        """The reject counts by kind, most frequent first, and the first lines rejected."""
        if not self.rejected:
            return "no rejects"
        kinds = ", ".join(f"{count} {reason}" for reason, count in self.reasons.most_common())
        lines = ", ".join(map(str, self.first_reject_lines))
        return f"{kinds} (first at line(s) {lines})"


class CsvHeader(NamedTuple):
    """The input's columns and where the two features are."""

    columns: List[str]
    orders_index: int
    product_index: int


def read_header(reader: Any) -> CsvHeader:
    """Read the header row and find the feature columns.

    Raises:
        ScoringError: empty input, a feature column missing or repeated, or the estimate
            column already present.
    """
    columns = next(reader, None)
    while columns == []:
        columns = next(reader, None)
    if columns is None:
        raise ScoringError("the input is empty: expected a CSV header with orders_placed and product_code")
    missing = [name for name in (ORDERS_COLUMN, PRODUCT_COLUMN) if name not in columns]
    if missing:
        header = listed([quote(name) for name in columns[:MESSAGES.max_codes_named]], total=len(columns))
        raise ScoringError(f"the input has no column {' or '.join(missing)}; its header is {header}")
    repeated = sorted({name for name in (ORDERS_COLUMN, PRODUCT_COLUMN) + OUTPUT_COLUMNS
                       if columns.count(name) > 1})
    if repeated:
        raise ScoringError(f"the input's header repeats the column(s) {', '.join(repeated)}")
    present = [name for name in OUTPUT_COLUMNS if name in columns]
    if present:
        raise ScoringError(f"the input already has a column {' and '.join(present)}; refusing to overwrite it")
    return CsvHeader(columns, columns.index(ORDERS_COLUMN), columns.index(PRODUCT_COLUMN))


def orders_placed_problem(text: str) -> Optional[str]:
    """Why an `orders_placed` value cannot be scored, or None if it can.

    The service accepts a finite number from 0 to ARTEFACT.max_accepted_orders_placed; so does this.
    """
    try:
        value = float(text)
    except ValueError:
        if not text.strip():
            return "orders_placed is missing"
        return f"orders_placed is not a number: {quote(text)}"
    if not math.isfinite(value):
        return f"orders_placed is not finite: {quote(text)}"
    if value < 0:
        return f"orders_placed is negative: {quote(text)}"
    if value > ARTEFACT.max_accepted_orders_placed:
        return f"orders_placed is above {ARTEFACT.max_accepted_orders_placed:g}: {quote(text)}"
    return None


def product_code_problem(code: str, known: Any) -> Optional[str]:
    """Why a product code cannot be scored (missing, or not one the model knows), or None."""
    if code in known:
        return None
    if not code.strip():
        return "product_code is missing"
    return f"unknown product code: {quote(code)}"


def score_chunks(
    text: TextIO, model: Model, chunk_rows: int = BATCH.default_chunk_rows
) -> Iterator[Any]:
    """Parse, validate and score a CSV, a chunk of at most `chunk_rows` records at a time.

    Yields first the `CsvHeader`, then `ScoredChunk`s. Line numbers count the header as line
    1 and every physical line (a record with a quoted line break starts on the line given);
    a blank line is not a row.

    Raises:
        ScoringError: the header is unusable (see `read_header`).
    """
    reader = csv.reader(text)
    header = read_header(reader)
    lookup = {code: index for index, code in enumerate(model.product_codes)}
    yield header
    while True:
        first_line = reader.line_num + 1
        records = list(itertools.islice(reader, chunk_rows))
        if not records:
            return
        one_line_each = reader.line_num - first_line + 1 == len(records)
        yield score_records(records, first_line, one_line_each, header, model, lookup)


def score_records(
    records: List[List[str]],
    first_line: int,
    one_line_each: bool,
    header: CsvHeader,
    model: Model,
    lookup: Dict[str, int],
) -> ScoredChunk:
    """Validate and score parsed records, the first starting at line `first_line`.

    The common case (every row fine) runs vectorised; rejected rows are looked at one by
    one, to say why.
    """
    width, orders_at, product_at = len(header.columns), header.orders_index, header.product_index
    if set(map(len, records)) == {width}:
        whole = records
        rejects: List[Reject] = []
        line_of = None
    else:
        line_of = _line_numbers(records, first_line, one_line_each)
        whole = [record for record in records if len(record) == width]
        rejects = [Reject(line, f"wrong number of fields: expected {width}, got {len(record)}", record)
                   for record, line in zip(records, line_of) if record and len(record) != width]
    codes = list(map(operator.itemgetter(product_at), whole))
    orders_text = list(map(operator.itemgetter(orders_at), whole))
    try:
        orders = np.array(orders_text, dtype=np.float64)
    except ValueError:  # some value is not a number: make it NaN, its reason comes below
        orders = np.array([_number(value) for value in orders_text], dtype=np.float64)
    known = np.fromiter(map(lookup.__contains__, codes), dtype=bool, count=len(codes))
    fine = known & np.isfinite(orders) & (orders >= 0) & (orders <= ARTEFACT.max_accepted_orders_placed)
    if fine.all():
        rows = whole
    else:
        if line_of is None:
            line_of = _line_numbers(records, first_line, one_line_each)
        whole_lines = [line for record, line in zip(records, line_of) if len(record) == width]
        for record, line, ok in zip(whole, whole_lines, fine.tolist()):
            if not ok:
                problems = [problem for problem in (orders_placed_problem(record[orders_at]),
                                                    product_code_problem(record[product_at], lookup)) if problem]
                rejects.append(Reject(line, "; ".join(problems), record))
        rejects.sort(key=lambda reject: reject.line)
        rows = list(itertools.compress(whole, fine.tolist()))
        codes = list(itertools.compress(codes, fine.tolist()))
        orders = orders[fine]
    estimated = model.estimate(codes, orders)
    return ScoredChunk(rows, codes, estimated.est_hours_to_dispatch, estimated.upper_hours_to_dispatch,
                       estimated.extrapolated, rejects, _output_text(rows, estimated, width))


def _line_numbers(records: List[List[str]], first_line: int, one_line_each: bool) -> List[int]:
    """The line each record starts on (a quoted line break inside a record adds a line)."""
    if one_line_each:
        return list(range(first_line, first_line + len(records)))
    starts: List[int] = []
    line = first_line
    for record in records:
        starts.append(line)
        line += 1 + sum(field.count("\n") + field.count("\r") - field.count("\r\n") for field in record)
    return starts


def _output_text(rows: List[List[str]], estimated: Estimates, width: int) -> str:
    """The scored rows with their prediction fields as CSV text.

    repr of a float is the shortest text that reads back as the same float: what the API's
    JSON holds for the same estimate; the repr of a list holds each one's, made in one call.
    """
    if not rows:
        return ""
    upper = estimated.upper_hours_to_dispatch
    texts = list(map(",".join, zip(
        repr(estimated.est_hours_to_dispatch.tolist())[1:-1].split(", "),
        [""] * len(rows) if upper is None else repr(upper.tolist())[1:-1].split(", "),
        map(_FLAG_TEXT.__getitem__, estimated.extrapolated.tolist()),
    )))
    lines = list(map(",".join, rows))
    block = "\n".join(lines)
    if ('"' not in block and "\r" not in block and block.count("\n") == len(rows) - 1
            and block.count(",") == (width - 1) * len(rows)):
        # No field holds a comma, a quote or a line break, so joining with commas is the CSV
        # that a writer would make; it is much faster.
        return "\n".join(map(",".join, zip(lines, texts))) + "\n"
    for row, text in zip(rows, texts):
        row.extend(text.split(","))
    return csv_bytes(rows).decode("utf-8")


def csv_bytes(rows: Any) -> bytes:
    """Rows (lists of strings) as UTF-8 CSV with `\\n` line ends, quoting only where needed."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")


def output_bytes(chunk: ScoredChunk) -> bytes:
    """A chunk's scored rows with the estimate appended, as CSV."""
    return chunk.output.encode("utf-8")


def rejects_bytes(chunk: ScoredChunk) -> bytes:
    """A chunk's rejects as CSV rows: line, reason, the original row as CSV text."""
    return csv_bytes(
        [str(r.line), r.reason, csv_bytes([r.fields]).decode("utf-8").rstrip("\n")] for r in chunk.rejects
    )


def check_reject_fraction(summary: ScoringSummary, max_fraction: float) -> None:
    """Raises RejectFractionError if more than `max_fraction` of the rows were rejected."""
    if summary.reject_fraction > max_fraction:
        raise RejectFractionError(
            f"{summary.rejected} of {summary.rows} rows ({summary.reject_fraction:.2%}) could not be "
            f"scored, above the allowed {max_fraction:.2%}: {summary.describe_rejects()}"
        )


class ProgressLog:
    """Logs rows done and rows per second, at most every `seconds`."""

    def __init__(self, what: str, seconds: float = BATCH.progress_seconds) -> None:
        self.what, self.seconds = what, seconds
        self.started = self._last = time.monotonic()

    def update(self, rows: int) -> None:
        now = time.monotonic()
        if now - self._last >= self.seconds:
            self._last = now
            log.info(f"{self.what}: {rows:,} rows done, {rows / (now - self.started):,.0f} rows/s")

    def rate(self, rows: int) -> float:
        return rows / max(time.monotonic() - self.started, 1e-9)


def written_keys(output_key: str) -> Tuple[str, str]:
    """The two objects scoring into `output_key` writes: the output and its rejects."""
    return output_key, output_key + LAYOUT.rejects_suffix


def check_keys_apart(input_key: str, output_key: str) -> None:
    """Refuse a run that would write over the object it reads.

    The rejects go to `output_key` + `.rejects.csv`, so an output key that differs from the
    input can still overwrite it (`x.csv.rejects.csv` scored into `x.csv`).

    Raises:
        ScoringError: the output or the rejects key is the input key, naming which.
    """
    output, rejects = written_keys(output_key)
    if input_key == output:
        raise ScoringError(f"OUTPUT_KEY is INPUT_KEY ({quote(input_key)}); the input is never overwritten")
    if input_key == rejects:
        raise ScoringError(
            f"the rejects would go to OUTPUT_KEY + {LAYOUT.rejects_suffix}, which is INPUT_KEY "
            f"({quote(input_key)}); the input is never overwritten: choose another OUTPUT_KEY")


def scored_object_metadata(model: Model, input_key: str, input_etag: str) -> Dict[str, str]:
    """The metadata of a scored object: the model's artefact id and version, the input's key
    and ETag."""
    return {LAYOUT.model_id_metadata_key: model.artefact_id, LAYOUT.model_version_metadata_key: str(model),
            LAYOUT.input_metadata_key: input_key, LAYOUT.input_etag_metadata_key: input_etag}


def score_object(
    bucket: str,
    input_key: str,
    output_key: str,
    model: Model,
    max_reject_fraction: float = BATCH.default_max_reject_fraction,
    chunk_rows: int = BATCH.default_chunk_rows,
    on_chunk: Optional[Callable[[CsvHeader, ScoredChunk], None]] = None,
    client: Any = None,
) -> ScoringSummary:
    """Score one S3 object into another, streamed in and written by multipart upload.

    The output (`output_key`) and the rejects (`output_key` + `.rejects.csv`, header only if
    there are none) both appear only if the whole input was read and the reject fraction is
    within `max_reject_fraction`; otherwise both uploads are aborted and nothing is written.
    `on_chunk` sees every chunk before it is written (the backfill measures the estimates).

    Raises:
        ScoringError: the output or the rejects key is the input key (nothing is read or
            written), unusable header, or too many rejects (RejectFractionError).
        StorageError: S3 refused or failed.
        UnicodeDecodeError: the input is not UTF-8 text.
    """
    check_keys_apart(input_key, output_key)
    _, rejects_key = written_keys(output_key)
    summary = ScoringSummary()
    progress = ProgressLog(f"scoring s3://{bucket}/{input_key}")
    stream = open_object_stream(bucket, input_key, client)
    metadata = scored_object_metadata(model, input_key, stream.etag)
    with stream.body, io.TextIOWrapper(stream.body, encoding="utf-8-sig", newline="") as text, \
            MultipartWriter(bucket, output_key, metadata=metadata, client=client) as output, \
            MultipartWriter(bucket, rejects_key, metadata=metadata, client=client) as rejects:
        chunks = score_chunks(text, model, chunk_rows)
        header: CsvHeader = next(chunks)
        output.write(csv_bytes([header.columns + list(OUTPUT_COLUMNS)]))
        rejects.write(csv_bytes([REJECT_COLUMNS]))
        for chunk in chunks:
            summary.add(chunk)
            if on_chunk is not None:
                on_chunk(header, chunk)
            rejects.write(rejects_bytes(chunk))
            output.write(output_bytes(chunk))
            progress.update(summary.rows)
        check_reject_fraction(summary, max_reject_fraction)
        rejects.complete()
        try:
            output.complete()
        except Exception:
            # The rejects of a run that wrote no output would describe nothing.
            delete_object(bucket, rejects_key, client)
            raise
    log.info(
        f"scored s3://{bucket}/{input_key} into s3://{bucket}/{output_key}: {summary.scored:,} of "
        f"{summary.rows:,} rows, {summary.rejected:,} rejected ({summary.describe_rejects()}) "
        f"to s3://{bucket}/{rejects_key}; {progress.rate(summary.rows):,.0f} rows/s; "
        f"model {model.artefact_id} ({model})"
    )
    return summary


# --- the backtest: how good the estimates were -------------------------------------------


@dataclass
class BacktestAccumulator:
    """Error sums over estimates and actual hours, fed chunk by chunk (memory stays flat).

    Rows whose label is missing or not a finite number are counted but not measured.
    """

    rows: int = 0
    unlabelled: int = 0
    sum_abs_error: float = 0.0
    sum_sq_error: float = 0.0
    sum_label: float = 0.0
    sum_sq_label: float = 0.0
    error_by_product: Dict[str, List[float]] = field(default_factory=dict)

    def add(self, header: CsvHeader, chunk: ScoredChunk) -> None:
        """Measure a chunk's estimates against the header's `hours_to_dispatch` column.

        Raises:
            ScoringError: the input has no `hours_to_dispatch` column.
        """
        if LABEL_COLUMN not in header.columns:
            raise ScoringError(f"the input has no column {LABEL_COLUMN}: nothing to measure the estimates against")
        at = header.columns.index(LABEL_COLUMN)
        labels = np.array([_number(row[at]) for row in chunk.rows], dtype=np.float64)
        measured = np.isfinite(labels)
        self.unlabelled += int((~measured).sum())
        labels, estimates = labels[measured], chunk.estimates[measured]
        codes = [code for code, ok in zip(chunk.product_codes, measured.tolist()) if ok]
        errors = estimates - labels
        self.rows += len(labels)
        self.sum_abs_error += float(np.abs(errors).sum())
        self.sum_sq_error += float((errors ** 2).sum())
        self.sum_label += float(labels.sum())
        self.sum_sq_label += float((labels ** 2).sum())
        for code, error in zip(codes, errors.tolist()):
            total = self.error_by_product.setdefault(code, [0.0, 0.0])
            total[0] += error
            total[1] += 1

    def metrics(self) -> Dict[str, Any]:
        """rows, MAE, r² and the mean error (estimate minus actual) by product code.

        MAE and r² are None without measured rows; r² is None when the labels do not vary.
        """
        n = self.rows
        total_sq = self.sum_sq_label - self.sum_label ** 2 / n if n else 0.0
        return {
            "rows": n,
            "unlabelled_rows": self.unlabelled,
            "mae": self.sum_abs_error / n if n else None,
            "r2": 1 - self.sum_sq_error / total_sq if n and total_sq > 0 else None,
            "mean_error_by_product": {
                code: total / count for code, (total, count) in sorted(self.error_by_product.items())
            },
        }


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan
