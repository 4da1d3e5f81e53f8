"""The model report: what report.json holds, valid PNGs, a self-contained HTML page, and the
report every train run writes under reports/ (over S3)."""
import hashlib
import json
import re
from typing import Any, Dict

import pytest

from pipeline.artefact.model import Model
from pipeline.model_registry.live_model import list_models
from pipeline.settings import LAYOUT
from pipeline.storage.client import StorageError
from pipeline.storage.report_files import get_report_html, put_report
from pipeline.storage.signed_artefacts import get_model
from pipeline.train import report, stage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# One grid point (the one the full search picks on weeks like these): the report, not the search, is tested.
ONE_POINT_GRID = {"criterion": ["squared_error"], "max_depth": [8], "min_samples_split": [2], "min_samples_leaf": [2]}


@pytest.fixture
def persisted(s3: Any, bucket_with_model: str) -> Dict[str, Any]:
    """A second model trained over S3 with a live model in the bucket, and its report's files."""
    model = stage.train(bucket_with_model, 0.9, 0.95, hyperparam_grid=ONE_POINT_GRID)
    assert model.report_key is not None
    folder = model.report_key.rsplit("/", 1)[0] + "/"
    listed = s3.list_objects_v2(Bucket=bucket_with_model, Prefix=folder)["Contents"]
    files = {item["Key"][len(folder):]: s3.get_object(Bucket=bucket_with_model, Key=item["Key"])
             for item in listed}
    return {"model": model, "folder": folder, "files": files,
            "live_before": list_models(bucket_with_model)[1].key}


def body(files: Dict[str, Any], name: str) -> bytes:
    return bytes(files[name]["Body"].read())


def test_every_run_writes_its_report_under_reports_in_a_folder_named_after_the_artefact(
    persisted: Dict[str, Any]
) -> None:
    model: Model = persisted["model"]

    artefact_name = model.artefact_key[len(LAYOUT.models_prefix):-len('.pkl')]
    assert persisted["folder"] == f"{LAYOUT.reports_prefix}{artefact_name}/"
    assert model.artefact_id in persisted["folder"]
    assert model.report_key == persisted["folder"] + "report.html"
    assert sorted(persisted["files"]) == sorted(["report.json", "report.html", *report.PLOT_FILES.values()])


def test_the_persisted_model_records_its_reports_sha256_and_serves_only_that_report(
    s3: Any, bucket_with_model: str, persisted: Dict[str, Any]
) -> None:
    model: Model = persisted["model"]
    loaded = get_model(bucket_with_model, str(model.artefact_key))
    page = body(persisted["files"], "report.html")

    assert loaded.report_sha256 == hashlib.sha256(page).hexdigest()
    assert get_report_html(bucket_with_model, loaded) == page


def test_report_json_holds_the_metrics_parameters_champion_drift_checks_and_decision(
    persisted: Dict[str, Any], trained_model: Model
) -> None:
    model: Model = persisted["model"]
    raw = body(persisted["files"], "report.json")

    content = json.loads(raw)

    assert raw.startswith(b'{\n "artefact_id"')  # indent 1, as the notebook reads it
    assert content["artefact_id"] == model.artefact_id
    assert content["metrics"]["mean_absolute_error"] == model.metrics.mean_absolute_error
    assert content["metrics"]["r_squared"] == model.metrics.r_squared
    assert content["hyperparameters"] == model.hyperparameters
    assert content["champion"]["artefact_key"] == persisted["live_before"]
    assert content["champion"]["recorded_metrics"]["mean_absolute_error"] == trained_model.metrics.mean_absolute_error
    assert content["champion"]["comparison"]["rows_compared"] == model.metrics.n_test
    assert content["drift"]["reference_dataset"] == f"s3://{trained_model.dataset.bucket}/{trained_model.dataset.key}"
    assert {s["kind"] for s in content["drift"]["statistics"]} == {"orders_placed", "product mix", "performance"}
    assert all({"value", "threshold", "drifted"} <= set(s) for s in content["drift"]["statistics"])
    assert content["logic_checks"] == {"passed": True, "failures": []}
    assert content["decision"] == {"accepted": True, "failures": []}


def test_report_json_holds_the_served_estimate_its_bound_coverage_and_the_trained_ranges(
    persisted: Dict[str, Any], trained_model: Model
) -> None:
    model: Model = persisted["model"]
    content = json.loads(body(persisted["files"], "report.json"))
    page = body(persisted["files"], "report.html").decode()

    assert model.tree_metrics is not None and model.upper_bound is not None
    assert content["tree_metrics"]["mean_absolute_error"] == model.tree_metrics.mean_absolute_error
    assert content["calibrated"] is True and content["dips"]["served"] == 0 and content["dips"]["tree"] > 0
    bound = content["upper_bound"]
    assert (bound["coverage"], bound["margin_hours"]) == (0.9, model.upper_bound.margin_hours)
    # Fitted on these rows: at least the coverage, by construction; the live model never saw them.
    assert bound["held_out_coverage"] >= 0.9
    assert 0.5 < bound["live_model_coverage"] <= 1.0
    assert content["trained_ranges"]["SKU001"] == [model.trained_range("SKU001").lowest,
                                                   model.trained_range("SKU001").highest]
    assert "falls 0 time(s)" in page and "flagged extrapolated (SKU001 " in page


def test_the_plots_are_png_images(persisted: Dict[str, Any]) -> None:
    for name in report.PLOT_FILES.values():
        assert body(persisted["files"], name).startswith(PNG_SIGNATURE), name
        assert persisted["files"][name]["ContentType"] == "image/png"


def test_report_html_is_self_contained_with_every_plot_embedded(persisted: Dict[str, Any]) -> None:
    page = body(persisted["files"], "report.html").decode("utf-8")

    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == len(report.PLOT_FILES)
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert re.findall(r"(?:href|url)\s*[=(]", page) == []
    assert "ACCEPTED: this model goes live" in page
    assert persisted["files"]["report.html"]["ContentType"].startswith("text/html")


def test_a_plotting_step_returns_a_figure_without_writing_anything(trained_model: Model) -> None:
    from matplotlib.figure import Figure
    from pipeline.local.synthetic import generate_orders

    figure = report.plot_estimate_curves(trained_model, trained_model, generate_orders(300, seed=3))

    assert isinstance(figure, Figure)
    assert len([axes for axes in figure.axes if axes.get_visible()]) == len(trained_model.product_codes)
    assert report.figure_png(figure).startswith(PNG_SIGNATURE)


def test_reports_are_never_written_under_models_nor_overwritten(s3: Any, bucket: str) -> None:
    with pytest.raises(ValueError, match="a report folder must be under reports/"):
        put_report(bucket, "models/x/", {"report.json": b"{}"})
    put_report(bucket, "reports/x/", {"report.json": b"{}"})
    with pytest.raises(StorageError, match="a report file already exists at this key"):
        put_report(bucket, "reports/x/", {"report.json": b"{}"})
