"""The backfill: replay every past week with the model that was live when it was dropped.

For each weekly dataset under `datasets/` in the range, the model is the newest
non-rejected model created before the dataset's timestamp (`live_model.live_model_among`, the
one definition of "live"). Its estimates go to `predictions/<dataset file stem>.csv` (the
dataset's rows, actual hours included, plus the estimate), and how good they were to
`predictions/backtest.json`, with a plot of weekly MAE over time in
`predictions/backtest_mae.png`. A week with no model before it is skipped and listed. A week
whose predictions object and backtest entry already come from the same model and the same
dataset version is not scored again.
"""
import io
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, NamedTuple, Optional, Set, Tuple

from pipeline.batch.scoring import (
    BacktestAccumulator,
    ScoringError,
    score_object,
    written_keys,
)
from pipeline.model_registry.live_model import list_models, live_model_among
from pipeline.model_registry.records import rejected_model_keys
from pipeline.settings import BATCH, LAYOUT
from pipeline.storage.client import StorageError, get_json_object, object_info, put_object_bytes, s3_client
from pipeline.storage.datasets import list_datasets
from pipeline.storage.layout import StoredObject, artefact_id_of_key, predictions_key
from pipeline.storage.signed_artefacts import get_model
from pipeline.utils import quote


log = logging.getLogger(__name__)


class BackfillError(Exception):
    """Some weeks could not be scored (the others were, and are in backtest.json)."""


class PlannedWeek(NamedTuple):
    """A dataset in the range and the model that was live when it was dropped (None: none)."""

    dataset: StoredObject
    model: Optional[StoredObject]


@dataclass
class BackfillResult:
    """What a backfill run did, week by week (dataset keys)."""

    scored: List[str] = field(default_factory=list)
    already_done: List[str] = field(default_factory=list)
    without_model: List[str] = field(default_factory=list)
    failed: Dict[str, str] = field(default_factory=dict)


def parse_date(text: str, end_of_day: bool = False) -> datetime:
    """An ISO-8601 date or date-time as an aware UTC datetime (naive means UTC).

    A bare date stands for the start of that day, or with `end_of_day` for the start of the
    next one (so `--until 2021-07-02` includes that whole day).

    Raises:
        ValueError: naming the text, if it is not an ISO-8601 date or date-time.
    """
    try:
        stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO-8601 date or date-time: {quote(text)}") from None
    stamp = stamp.replace(tzinfo=timezone.utc) if stamp.tzinfo is None else stamp.astimezone(timezone.utc)
    if end_of_day and len(text.strip()) == 10:
        stamp += timedelta(days=1)
    return stamp


def plan_weeks(
    datasets: List[StoredObject],
    models: List[StoredObject],
    rejected: Set[str],
    since: Optional[datetime] = None,
    until: Optional[datetime] = None,
) -> List[PlannedWeek]:
    """The datasets from `since` (inclusive) to `until` (exclusive), oldest first, each with
    the model live when it was dropped.

    Args:
        datasets: as `datasets.list_datasets` lists them.
        models: as `live_model.list_models` lists them (newest first).
        rejected: the rejected artefact keys (`records.rejected_model_keys`).
    """
    return [
        PlannedWeek(dataset, live_model_among(models, rejected, dataset.timestamp))
        for dataset in sorted(datasets, key=lambda item: (item.timestamp, item.key))
        if (since is None or dataset.timestamp >= since) and (until is None or dataset.timestamp < until)
    ]


def check_weeks_write_apart(plan: List[PlannedWeek]) -> None:
    """Refuse a backfill in which two writes would land on one key.

    A week's predictions key comes from its dataset's file name alone, so two datasets with
    the same name in different folders, or one named like another's rejects
    (`time_to_dispatch_<timestamp>.csv.rejects.csv`), would overwrite each other's output.

    Raises:
        BackfillError: naming the key and both datasets; checked before anything is written.
    """
    writers: Dict[str, str] = {LAYOUT.backtest_key: "the backtest summary",
                               LAYOUT.backtest_plot_key: "the backtest plot"}
    for week in plan:
        if week.model is None:
            continue
        for key in written_keys(predictions_key(week.dataset.key)):
            if key in writers:
                raise BackfillError(
                    f"{quote(week.dataset.key)} and {quote(writers[key])} would both be written to "
                    f"{quote(key)}; nothing was written: rename or remove one of the datasets")
            writers[key] = week.dataset.key


def is_already_done(
    week: PlannedWeek, entry: Optional[Dict[str, Any]], predictions_metadata: Optional[Dict[str, str]],
    dataset_etag: str,
) -> bool:
    """Whether a week's predictions and backtest entry come from this week's model and data."""
    if week.model is None or entry is None or predictions_metadata is None:
        return False
    model_id = artefact_id_of_key(week.model.key)
    return (
        entry.get("model_key") == week.model.key
        and entry.get("dataset_etag") == dataset_etag
        and predictions_metadata.get(LAYOUT.model_id_metadata_key) == model_id
        and predictions_metadata.get(LAYOUT.input_etag_metadata_key) == dataset_etag
    )


def run_backfill(
    bucket: str,
    since: Optional[datetime] = None,
    until: Optional[datetime] = None,
    max_reject_fraction: float = BATCH.default_max_reject_fraction,
    client: Any = None,
) -> BackfillResult:
    """Score every week in the range with its live model; write backtest.json and the plot.

    backtest.json keeps the entries of weeks outside this run's range from earlier runs.

    Raises:
        BackfillError: some weeks failed (each logged as a WARNING); the rest were written. Or
            two weeks would write to one key (`check_weeks_write_apart`): nothing was written.
        StorageError: listing the bucket or writing the summary failed.
    """
    client = client or s3_client()
    models = list_models(bucket, client)
    plan = plan_weeks(list_datasets(bucket, client), models,
                      rejected_model_keys(bucket, client) if models else set(), since, until)
    check_weeks_write_apart(plan)
    earlier = get_json_object(bucket, LAYOUT.backtest_key, client) or {}
    entries = {entry["dataset_key"]: entry for entry in earlier.get("weeks", [])}
    result = BackfillResult()
    loaded: Dict[str, Any] = {}
    for week in plan:
        key = week.dataset.key
        if week.model is None:
            log.warning(f"skipping s3://{bucket}/{key}: no model that is not rejected was created before it")
            result.without_model.append(key)
            continue
        try:
            entry = backfill_week(bucket, week, entries.get(key), loaded, max_reject_fraction, client)
        except (StorageError, ScoringError, UnicodeDecodeError) as error:
            log.warning(f"could not score s3://{bucket}/{key}: {error}")
            result.failed[key] = str(error)
            continue
        if entry is None:
            result.already_done.append(key)
        else:
            entries[key] = entry
            result.scored.append(key)
    weeks = sorted(entries.values(), key=lambda entry: (entry["dataset_timestamp"], entry["dataset_key"]))
    summary = {
        "generated_at": datetime.now(timezone.utc).isoformat(),
        "weeks": weeks,
        "skipped_without_model": result.without_model,
        "failed": [{"dataset_key": key, "error": error} for key, error in result.failed.items()],
    }
    put_object_bytes(bucket, LAYOUT.backtest_key, json_bytes(summary), "application/json", client)
    put_object_bytes(bucket, LAYOUT.backtest_plot_key, png_bytes(plot_weekly_mae(weeks)), "image/png", client)
    log.info(
        f"backfill of s3://{bucket}: {len(result.scored)} week(s) scored, {len(result.already_done)} "
        f"already done, {len(result.without_model)} without a model, {len(result.failed)} failed; "
        f"summary s3://{bucket}/{LAYOUT.backtest_key}, plot s3://{bucket}/{LAYOUT.backtest_plot_key}"
    )
    if result.failed:
        raise BackfillError(
            f"{len(result.failed)} week(s) could not be scored: "
            + "; ".join(f"{key}: {error}" for key, error in result.failed.items())
        )
    return result


def backfill_week(
    bucket: str,
    week: PlannedWeek,
    entry: Optional[Dict[str, Any]],
    loaded: Dict[str, Any],
    max_reject_fraction: float,
    client: Any,
) -> Optional[Dict[str, Any]]:
    """Score one week unless already done; returns its backtest entry, or None if skipped.

    `loaded` caches the models loaded so far by key.

    Raises:
        StorageError, ScoringError, UnicodeDecodeError: the week could not be scored.
    """
    assert week.model is not None
    output_key = predictions_key(week.dataset.key)
    dataset = object_info(bucket, week.dataset.key, client)
    if dataset is None:
        raise StorageError(f"s3://{bucket}/{week.dataset.key}: no such object")
    done = object_info(bucket, output_key, client)
    if is_already_done(week, entry, done.metadata if done else None, dataset.etag):
        log.info(f"s3://{bucket}/{week.dataset.key}: already scored by model {artefact_id_of_key(week.model.key)}")
        return None
    if week.model.key not in loaded:
        loaded[week.model.key] = get_model(bucket, week.model.key, client)
    model = loaded[week.model.key]
    accumulator = BacktestAccumulator()
    summary = score_object(bucket, week.dataset.key, output_key, model, max_reject_fraction,
                           on_chunk=accumulator.add, client=client)
    return {
        "dataset_key": week.dataset.key,
        "dataset_timestamp": week.dataset.timestamp.isoformat(),
        "dataset_etag": dataset.etag,
        "predictions_key": output_key,
        "model_key": model.artefact_key,
        "model_id": model.artefact_id,
        "model_version": str(model),
        "rows_read": summary.rows,
        "rows_rejected": summary.rejected,
        **accumulator.metrics(),
    }


def plot_weekly_mae(weeks: List[Dict[str, Any]]) -> Any:
    """A figure of each week's MAE over the dataset timestamps, a marker colour per model.

    Returns:
        A matplotlib Figure (never saved here: `png_bytes` turns it into an image).
    """
    # Imported here: only the backfill draws, and scoring a file should not pay for it.
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.dates import date2num
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4), layout="constrained")
    axes = figure.add_subplot()
    by_model: Dict[str, List[Tuple[float, float]]] = {}
    for week in weeks:
        if week.get("mae") is not None:
            when = float(date2num(datetime.fromisoformat(week["dataset_timestamp"])))
            by_model.setdefault(week["model_id"], []).append((when, float(week["mae"])))
    timeline = sorted(point for points in by_model.values() for point in points)
    if timeline:
        axes.plot([t for t, _ in timeline], [mae for _, mae in timeline], color="lightgray", zorder=1)
    for model_id, points in by_model.items():
        axes.scatter([t for t, _ in points], [mae for _, mae in points], label=f"model {model_id}", zorder=2)
    axes.xaxis_date()
    axes.set_title("Backtest: mean absolute error per week, with the model live then")
    axes.set_xlabel("dataset dropped (UTC)")
    axes.set_ylabel("MAE (hours)")
    axes.set_ylim(bottom=0)
    if by_model:
        axes.legend(fontsize="small")
    else:
        axes.text(0.5, 0.5, "no week scored", ha="center", va="center", transform=axes.transAxes)
    figure.autofmt_xdate()
    return figure


def png_bytes(figure: Any) -> bytes:
    """A figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def json_bytes(value: Any) -> bytes:
    """A value as indented UTF-8 JSON."""
    return json.dumps(value, indent=2, sort_keys=True).encode("utf-8")
