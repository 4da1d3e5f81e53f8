"""The model report of a training run: report.json, PNG plots and one self-contained report.html.

Train stage only (the serve stage never imports a plotting library). Every plotting step takes
data and returns a matplotlib `Figure`, never seeing a path; `build_report` renders the figures
to PNG bytes and returns every file as bytes, for `report_files.put_report` to write under
`reports/`. The HTML embeds the PNGs as base64 and links to nothing, so it can be opened
anywhere, by anyone, on its own.
"""
import base64
import html
import io
import json
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipeline.artefact.features import LABEL_COLUMN, ORDERS_COLUMN, PRODUCT_COLUMN
from pipeline.artefact.model import Model
from pipeline.settings import MESSAGES, TRAIN
from pipeline.train.champion import ChampionComparison, Decision
from pipeline.train.drift import DriftReport

REPORT_JSON, REPORT_HTML = "report.json", "report.html"
PLOT_FILES = {
    "predicted_vs_actual": "predicted_vs_actual.png",
    "estimate_curves": "estimate_curves.png",
    "residuals_by_product": "residuals_by_product.png",
    "orders_placed_distributions": "orders_placed_distributions.png",
}
JSON_INDENT = 1
DPI = 80


@dataclass(frozen=True)
class RunFindings:
    """Everything a run found, for its report."""

    model: Model
    champion: Optional[Model]
    week: pd.DataFrame
    reference: Optional[pd.DataFrame]
    test_orders: np.ndarray
    test_codes: List[str]
    test_labels: np.ndarray
    comparison: Optional[ChampionComparison]
    drift: DriftReport
    logic_failures: List[str]
    r_squared_thresholds: Tuple[float, float]
    champion_tolerance: float
    decision: Decision


def build_report(findings: RunFindings) -> Dict[str, bytes]:
    """Every file of the report, by file name: report.json, the PNG plots, report.html."""
    predictions = findings.model.predict(findings.test_codes, findings.test_orders)
    figures = {
        "predicted_vs_actual": plot_predicted_vs_actual(findings.test_labels, predictions, findings.test_codes),
        "estimate_curves": plot_estimate_curves(findings.model, findings.champion, findings.week),
        "residuals_by_product": plot_residuals_by_product(findings.test_labels, predictions, findings.test_codes),
        "orders_placed_distributions": plot_orders_distributions(findings.week, findings.reference),
    }
    pngs = {PLOT_FILES[name]: figure_png(figure) for name, figure in figures.items()}
    content = report_content(findings)
    return {
        REPORT_JSON: (json.dumps(_json_safe(content), indent=JSON_INDENT, ensure_ascii=False) + "\n").encode("utf-8"),
        **pngs,
        REPORT_HTML: report_html(content, pngs).encode("utf-8"),
    }


def report_content(findings: RunFindings) -> Dict[str, Any]:
    """What report.json holds: metrics, parameters, champion, drift, checks, the decision."""
    model = findings.model
    error_threshold, warning_threshold = findings.r_squared_thresholds
    champion = findings.champion
    return {
        "artefact_id": model.artefact_id,
        "created_at": model.created_at.isoformat(),
        "model_version": str(model),
        "dataset": {"bucket": model.dataset.bucket, "key": model.dataset.key, "etag": model.dataset.etag,
                    "version_id": model.dataset.version_id},
        "metrics": {"r_squared": model.metrics.r_squared, "mean_absolute_error": model.metrics.mean_absolute_error,
                    "n_train": model.metrics.n_train, "n_test": model.metrics.n_test},
        "tree_metrics": None if model.tree_metrics is None else {
            "r_squared": model.tree_metrics.r_squared,
            "mean_absolute_error": model.tree_metrics.mean_absolute_error},
        "calibrated": model.calibration is not None,
        "dips": {"tree": model.monotonicity.total_decreasing_steps,
                 "served": None if model.served_monotonicity is None
                 else model.served_monotonicity.total_decreasing_steps},
        "upper_bound": upper_bound_content(findings),
        "trained_ranges": {code: [model.trained_range(code).lowest, model.trained_range(code).highest]
                           for code in model.product_codes},
        "hyperparameters": dict(model.hyperparameters),
        "product_codes": list(model.product_codes),
        "logic_checks": {"passed": not findings.logic_failures, "failures": list(findings.logic_failures)},
        "r_squared_thresholds": {"error": error_threshold, "warning": warning_threshold},
        "champion": None if champion is None else {
            "artefact_id": champion.artefact_id,
            "artefact_key": champion.artefact_key,
            "recorded_metrics": {"r_squared": champion.metrics.r_squared,
                                 "mean_absolute_error": champion.metrics.mean_absolute_error},
            "comparison": None if findings.comparison is None else findings.comparison.to_json(),
        },
        "champion_tolerance": findings.champion_tolerance,
        "drift": findings.drift.to_json(),
        "decision": findings.decision.to_json(),
        "plots": list(PLOT_FILES.values()),
    }


def upper_bound_content(findings: RunFindings) -> Optional[Dict[str, Any]]:
    """The upper bound and its coverage of the held-out rows: the new model's (the rows it was
    fitted on, so at least its coverage by construction) and the live model's (rows it never
    saw: next week's coverage, the claim that matters)."""
    bound = findings.model.upper_bound
    if bound is None:
        return None
    content: Dict[str, Any] = {"coverage": bound.coverage, "margin_hours": bound.margin_hours,
                               "held_out_coverage": held_out_coverage(findings.model, findings),
                               "live_model_coverage": None}
    champion = findings.champion
    if champion is not None and champion.upper_bound is not None:
        content["live_model_coverage"] = held_out_coverage(champion, findings)
    return content


def held_out_coverage(model: Model, findings: RunFindings) -> Optional[float]:
    """The share of the held-out rows (of codes the model knows) at or below its upper bound."""
    known = np.array([code in model.product_codes for code in findings.test_codes], dtype=bool)
    if not known.any():
        return None
    estimates = model.estimate([c for c, k in zip(findings.test_codes, known) if k], findings.test_orders[known])
    if estimates.upper_hours_to_dispatch is None:
        return None
    return float(np.mean(findings.test_labels[known] <= estimates.upper_hours_to_dispatch))


# --- plots: each takes data and returns a figure -----------------------------------------


def plot_predicted_vs_actual(labels: np.ndarray, predictions: np.ndarray, codes: Sequence[str]) -> Figure:
    """The new model's estimates against the real hours on the held-out rows, by product."""
    figure = Figure(figsize=(6, 5), dpi=DPI)
    axes = figure.subplots()
    for code in sorted(set(codes)):
        mask = np.array([c == code for c in codes])
        axes.scatter(labels[mask], predictions[mask], s=12, alpha=0.7, label=code)
    top = float(max(np.max(labels), np.max(predictions), 1.0))
    axes.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="perfect estimate")
    axes.set(xlabel="actual hours to dispatch", ylabel="estimated hours to dispatch",
             title="Estimated against actual, held-out orders")
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot_estimate_curves(model: Model, champion: Optional[Model], week: pd.DataFrame) -> Figure:
    """Each product's served estimate over orders_placed, with the tree's own steps, the upper
    bound, the trained range's edges (beyond them requests are flagged extrapolated) and the
    live model's estimate dashed, against the week's orders as points."""
    codes = list(model.product_codes)
    columns = min(len(codes), 3)
    rows = math.ceil(len(codes) / columns)
    figure = Figure(figsize=(4 * columns, 3.2 * rows), dpi=DPI)
    axes_grid = np.atleast_1d(figure.subplots(rows, columns, squeeze=False).ravel())
    orders = pd.to_numeric(week[ORDERS_COLUMN], errors="coerce")
    labels = pd.to_numeric(week[LABEL_COLUMN], errors="coerce")
    week_codes = week[PRODUCT_COLUMN].astype(str).str.strip()
    grid = np.arange(0.0, float(np.nanmax(orders.to_numpy())) + TRAIN.dips_beyond_orders + TRAIN.dips_step_orders,
                     TRAIN.dips_step_orders)
    for axes, code in zip(axes_grid, codes):
        mask = (week_codes == code).to_numpy()
        axes.scatter(orders[mask], labels[mask], s=6, alpha=0.35, color="grey", label="this week's orders")
        estimates = model.estimate([code] * len(grid), grid)
        if model.calibration is not None:
            axes.plot(grid, model.predict_tree([code] * len(grid), grid), color="tab:green", linewidth=0.8,
                      alpha=0.8, drawstyle="steps-post", label="the tree's steps")
        axes.plot(grid, estimates.est_hours_to_dispatch, color="tab:blue", drawstyle="steps-post",
                  label="new model (served)")
        if estimates.upper_hours_to_dispatch is not None and model.upper_bound is not None:
            axes.plot(grid, estimates.upper_hours_to_dispatch, color="tab:blue", linestyle=":",
                      drawstyle="steps-post", label=f"upper bound ({model.upper_bound.coverage:g})")
        trained = model.trained_range(code)
        for edge in (trained.lowest, trained.highest):
            axes.axvline(edge, color="tab:red", linewidth=0.8, linestyle="-.")
        axes.axvspan(trained.highest, float(grid[-1]), color="tab:red", alpha=0.06,
                     label="extrapolated (outside the trained range)")
        if champion is not None and code in champion.product_codes:
            axes.plot(grid, champion.predict([code] * len(grid), grid), color="tab:orange", linestyle="--",
                      label=f"live model {champion.artefact_id}")
        axes.set(title=code, xlabel="orders placed that day", ylabel="hours to dispatch")
    for axes in axes_grid[len(codes):]:
        axes.set_visible(False)
    axes_grid[0].legend(fontsize=7)
    figure.tight_layout()
    return figure


def plot_residuals_by_product(labels: np.ndarray, predictions: np.ndarray, codes: Sequence[str]) -> Figure:
    """The new model's errors (actual minus estimate) on the held-out rows, one box per product."""
    figure = Figure(figsize=(6, 4), dpi=DPI)
    axes = figure.subplots()
    products = sorted(set(codes))
    residuals = labels - predictions
    axes.boxplot([residuals[np.array([c == code for c in codes])] for code in products])
    axes.set_xticks(range(1, len(products) + 1), products)
    axes.axhline(0.0, color="grey", linewidth=1)
    axes.set(xlabel="product", ylabel="actual minus estimated hours", title="Errors on held-out orders by product")
    figure.tight_layout()
    return figure


def plot_orders_distributions(week: pd.DataFrame, reference: Optional[pd.DataFrame]) -> Figure:
    """Histograms of orders_placed this week and in the live model's training week."""
    figure = Figure(figsize=(6, 4), dpi=DPI)
    axes = figure.subplots()
    current = pd.to_numeric(week[ORDERS_COLUMN], errors="coerce").dropna().to_numpy()
    samples = [current]
    if reference is not None:
        samples.append(pd.to_numeric(reference[ORDERS_COLUMN], errors="coerce").dropna().to_numpy())
    bins = np.histogram_bin_edges(np.concatenate(samples), bins=30).tolist()
    axes.hist(current, bins=bins, alpha=0.6, density=True, label="this week")
    if reference is not None:
        axes.hist(samples[1], bins=bins, alpha=0.6, density=True, label="live model's training week")
    axes.set(xlabel="orders placed that day", ylabel="share of orders", title="orders_placed, the two weeks")
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def figure_png(figure: Figure) -> bytes:
    """A figure rendered as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


# --- the HTML page ------------------------------------------------------------------------

_CAPTIONS = {
    "predicted_vs_actual.png": "Each dot is an order held back from training: how long it really took (across) "
                               "and what the new model estimated (up). Dots near the dashed line are good estimates.",
    "estimate_curves.png": "For each product, the estimate as the day gets busier. Grey dots are this week's orders; "
                           "the blue steps are the new model's served estimate (never lower for a busier day), the "
                           "green steps the tree it calibrates, the dotted blue line its upper bound, the dashed "
                           "orange line the model serving until now; red lines mark the range of orders trained on, "
                           "beyond which requests are flagged extrapolated.",
    "residuals_by_product.png": "How far off the new model was on held-back orders, per product. Boxes "
                                "centred on zero and of similar height mean no product is systematically "
                                "over- or under-estimated.",
    "orders_placed_distributions.png": "How busy the days were this week compared with the week the serving model "
                                       "learned from. Very different shapes mean the shop's traffic changed.",
}


def report_html(content: Dict[str, Any], pngs: Dict[str, bytes]) -> str:
    """One self-contained page: the decision in plain words, the checks, the drift, the plots."""
    e = html.escape
    decision = content["decision"]
    metrics = content["metrics"]
    verdict = ("ACCEPTED: this model goes live" if decision["accepted"]
               else "REFUSED: this model does not go live; the serving model stays")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Model report {e(content['artefact_id'])}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        ".ok{color:#1a7f37}.bad{color:#b42318;font-weight:bold}img{max-width:100%}"
        "figcaption{color:#555;margin-bottom:2em}</style></head><body>",
        f"<h1>Model report {e(content['artefact_id'])}</h1>",
        f"<p class=\"{'ok' if decision['accepted'] else 'bad'}\">{e(verdict)}</p>",
    ]
    if decision["failures"]:
        parts.append("<ul>" + "".join(f"<li>{e(f)}</li>" for f in decision["failures"]) + "</ul>")
    parts += [
        f"<p>Trained on {e(content['dataset']['key'])} at {e(content['created_at'])}. On "
        f"{metrics['n_test']} orders held back from training its estimates were off by "
        f"{metrics['mean_absolute_error']:.2f} hours on average (mean absolute error), and it explains "
        f"{metrics['r_squared']:.1%} of the variation in dispatch times (r²; required: at least "
        f"{content['r_squared_thresholds']['error']:.0%}).</p>",
        f"<p>{e(_served_sentence(content))}</p>",
        "<h2>Against the model serving until now</h2>", f"<p>{e(_champion_sentence(content))}</p>",
        "<h2>Common-sense checks</h2>",
        "<p class=\"ok\">Passed: estimates rise from 100 to 150 orders for every product; none is negative "
        "or far above the longest real dispatch time.</p>" if content["logic_checks"]["passed"] else
        "<ul>" + "".join(f'<li class="bad">{e(f)}</li>' for f in content["logic_checks"]["failures"]) + "</ul>",
        "<h2>Has the data changed? (drift)</h2>", _drift_table(content["drift"]),
        "<h2>Plots</h2>",
    ]
    for name, png in pngs.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure><img alt="{e(name)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{e(_CAPTIONS.get(name, name))}</figcaption></figure>")
    parts.append(f"<p><small>{e(content['model_version'])}</small></p></body></html>")
    return "\n".join(parts) + "\n"


def _served_sentence(content: Dict[str, Any]) -> str:
    """The calibration, the upper bound and its held-out coverage, and the trained ranges, in words."""
    tree, dips, bound = content["tree_metrics"], content["dips"], content["upper_bound"]
    words = []
    if content["calibrated"] and tree is not None:
        words.append(f"The served estimate is the tree's, made never lower for a busier day: the tree alone was off "
                     f"by {tree['mean_absolute_error']:.2f} hours and fell {dips['tree']} time(s) as orders grew; "
                     f"the served estimate falls {dips['served']} time(s).")
    elif tree is not None:
        words.append("Calibration was off for this run: the tree's own estimate is served.")
    if bound is not None:
        live = bound["live_model_coverage"]
        words.append(f"Upper bound: estimate + {bound['margin_hours']:.2f} hours, for {bound['coverage']:.0%} of "
                     f"orders; it covered {bound['held_out_coverage']:.1%} of the held-out orders it was fitted on"
                     + (f", and the serving model's bound covered {live:.1%} of them (orders it never saw)."
                        if live is not None else "."))
    ranges = ", ".join(f"{code} {low:g}-{high:g}" for code, (low, high) in
                       list(content["trained_ranges"].items())[:MESSAGES.max_codes_named])
    words.append(f"Requests outside the orders_placed trained on are flagged extrapolated ({ranges}).")
    return " ".join(words)


def _champion_sentence(content: Dict[str, Any]) -> str:
    champion = content["champion"]
    if champion is None:
        return "There was no model serving yet: this one is judged on the checks above alone."
    comparison = champion["comparison"]
    if comparison is None:
        return f"The serving model {champion['artefact_id']} knows none of this week's products; no comparison."
    left_out = (f" Orders of {', '.join(comparison['codes_left_out'])}, which it does not know, are left out."
                if comparison["codes_left_out"] else "")
    verdict = "worse than allowed" if comparison["refused"] else "within what is allowed"
    return (
        f"On the same {comparison['rows_compared']} held-back orders, the serving model "
        f"{champion['artefact_id']} was off by {comparison['champion_mae']:.2f} hours on average and the new "
        f"model by {comparison['challenger_mae']:.2f} hours ({comparison['relative_difference']:+.1%}; up to "
        f"{comparison['tolerance']:.0%} worse is allowed): {verdict}.{left_out}"
    )


def _drift_table(drift: Dict[str, Any]) -> str:
    e = html.escape
    if not drift["statistics"]:
        return "<p>" + e("; ".join(drift["notes"]) or "No drift statistics.") + "</p>"
    rows = "".join(
        f"<tr><td>{e(s['subject'])}</td><td>{e(s['statistic'])}</td><td>{s['value']:.3g}</td>"
        f"<td>{s['threshold']:g}</td><td class=\"{'bad' if s['drifted'] else 'ok'}\">"
        f"{'changed' if s['drifted'] else 'as before'}</td></tr>"
        for s in drift["statistics"]
    )
    notes = "".join(f"<p>{e(n)}</p>" for n in drift["notes"])
    return (f"<p>Compared with {e(drift['reference_dataset'] or 'the serving model')}. Drift never blocks a "
            "model; it says where to look.</p><table><tr><th>what</th><th>statistic</th><th>value</th>"
            f"<th>threshold</th><th>verdict</th></tr>{rows}</table>{notes}")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item())
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
