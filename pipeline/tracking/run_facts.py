"""What a train run's MLflow run holds: parameters, metrics and tags, from the facts the stage
already has (the model's lineage, its report.json, the decision). Pure: data in, data out.

Metrics are found generically: every number in the report and the lineage is one, named by its
path (`metrics.r_squared`, `champion.comparison.challenger_mae`, `drift.statistics.orders_placed.PSI.value`,
`monotonicity.total_decreasing_steps`), so a figure the report or the lineage gains later (a
coverage, a calibrated estimate's error) is logged without a change here. Numbers whose name
ends in a threshold, a tolerance or a level are settings of the run, so they are parameters too.
"""
import math
import re
from typing import Any, Dict, Iterator, Mapping, NamedTuple, Optional, Sequence, Tuple

from pipeline.settings import TRACKING

# Report and lineage entries that are not metrics: the chosen hyper-parameters are parameters,
# and the identities are tags.
_NOT_METRICS = ("hyperparameters", "library_versions", "product_codes", "plots", "dataset")
# A number named like this is a setting of the run: a parameter as well as a metric.
_PARAMETER_ENDINGS = ("threshold", "tolerance", "level")
# What a list's items are named by in a metric's path (drift statistics: subject and statistic).
_ITEM_NAMES = ("subject", "statistic", "name")
# The gates of a decision, by the start of their failure line (train/champion.py's `decide`).
_GATE_NAMES = {"logic checks": "logic_checks", "r² error threshold": "r2_error_threshold", "champion": "champion"}


class RunFacts(NamedTuple):
    """An MLflow run's parameters, metrics and tags, keys and values already within MLflow's limits."""

    params: Dict[str, str]
    metrics: Dict[str, float]
    tags: Dict[str, str]


def run_facts(
    lineage: Mapping[str, Any],
    report: Mapping[str, Any],
    extra_params: Mapping[str, Any],
    extra_metrics: Mapping[str, float],
    failures: Sequence[str],
    artefact_uri: Optional[str],
) -> RunFacts:
    """The parameters, metrics and tags of one train run.

    Args:
        lineage: the model's `lineage()`.
        report: its report.json, as a dict (empty for a model made before reports).
        extra_params: what the stage knows beyond both (the grid's size, the worker count).
        extra_metrics: the same for metrics (the logic checks' headroom).
        failures: every gate that refused the model (empty: accepted).
        artefact_uri: where the persisted model is (None: refused, nothing persisted).
    """
    params: Dict[str, Any] = {f"hyperparameter.{k}": v for k, v in lineage.get("hyperparameters", {}).items()}
    metrics_of = lineage.get("metrics", {})
    for name in ("n_train", "n_test"):
        if name in metrics_of:
            params[f"rows.{name}"] = metrics_of[name]
    params.update(extra_params)
    metrics: Dict[str, float] = {}
    for source in (report, lineage):
        for path, value in numbers(source):
            metrics.setdefault(path, value)
            if any(part.rstrip("s").endswith(_PARAMETER_ENDINGS) for part in path.split(".")):
                params.setdefault(path, value)
    metrics.update(extra_metrics)
    return RunFacts(
        {_key(k): _value(v) for k, v in params.items()},
        {_key(k): float(v) for k, v in metrics.items() if math.isfinite(float(v))},
        {_key(k): _value(v) for k, v in _tags(lineage, failures, artefact_uri).items() if v is not None},
    )


def numbers(value: Any, path: str = "") -> Iterator[Tuple[str, float]]:
    """Every number in a JSON-like value with its path (booleans as 0 and 1), leaving out
    `_NOT_METRICS` at the top."""
    if isinstance(value, bool):
        yield path, float(value)
    elif isinstance(value, (int, float)):
        yield path, float(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not path and key in _NOT_METRICS:
                continue
            yield from numbers(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            name = ".".join(str(item[k]) for k in _ITEM_NAMES if isinstance(item, Mapping) and k in item) \
                or str(index)
            yield from numbers(item, f"{path}.{name}")


def gate_names(failures: Sequence[str]) -> Tuple[str, ...]:
    """The short names of the gates that failed (logic_checks, r2_error_threshold, champion)."""
    names = []
    for failure in failures:
        start = failure.split(":", 1)[0]
        names.append(_GATE_NAMES.get(start, _key(start)))
    return tuple(names)


def _tags(lineage: Mapping[str, Any], failures: Sequence[str], artefact_uri: Optional[str]) -> Dict[str, Any]:
    dataset = lineage.get("dataset", {})
    tags: Dict[str, Any] = {
        "artefact_id": lineage.get("artefact_id"),
        "artefact_uri": artefact_uri,
        "model_version": lineage.get("model_version"),
        "model_hash": lineage.get("model_hash"),
        "dataset.bucket": dataset.get("bucket"),
        "dataset.key": dataset.get("key"),
        "dataset.etag": dataset.get("etag"),
        "dataset.version_id": dataset.get("version_id"),
        "git_commit": lineage.get("git_commit"),
        "decision": "refused" if failures else "accepted",
        "mlflow.source.git.commit": lineage.get("git_commit"),
    }
    tags.update({f"library.{name}": version for name, version in lineage.get("library_versions", {}).items()})
    if failures:
        tags["refused_by"] = ", ".join(gate_names(failures))
        tags.update({f"gate.{name}": failure for name, failure in zip(gate_names(failures), failures)})
    return tags


def _key(name: str) -> str:
    """A name as MLflow takes it: letters, digits, `_-./` and spaces, at most TRACKING.max_key_chars."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name.replace("²", "2"))[:TRACKING.max_key_chars]


def _value(value: Any) -> str:
    return str(value)[:TRACKING.max_value_chars]
