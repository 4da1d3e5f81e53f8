"""Every limit, threshold, budget, timeout, size, path, S3 key prefix, metadata key and
environment variable name of the pipeline, once, with its unit and why it has its value.

Settings come in groups, each a frozen dataclass whose fields carry their unit and their
reason in the field's metadata (`unit`, `why`); `SETTINGS` holds one of each, and the module
names each group for its importers (`from pipeline.settings import SERVE`, then
`SERVE.max_body_bytes`). Some budgets depend on each other (the S3 time budget and the serve
stage's start-up limit, the drain and the graceful stop and Kubernetes' grace period, the
connections and the body limit and the pod's memory): `check_budgets` asserts them together,
at import, so a change that breaks one fails at once, naming both numbers.

Standard library only: the local run imports this module before its virtualenv exists.
docs/settings.md is this module rendered (`render_markdown`); tests/test_settings.py fails when
the two differ. Regenerate it from the repository's root with

    python -c 'import pipeline.settings as s; print(s.render_markdown(), end="")' > docs/settings.md
"""
import dataclasses
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple

KIB = 1024
MIB = 2**20
# What Bodywork's `memory_request_mb` counts in: megabytes of 10^6 bytes (Kubernetes' "M").
MB = 10**6

_API_VERSION = "0.1"
_API_PREFIX = f"/api/v{_API_VERSION}"
_PREDICTIONS_PREFIX = "predictions/"


def setting(default: Any, unit: str, why: str) -> Any:
    """A field of a settings group: its value, its unit ("" for a name or a count of nothing
    in particular) and why it has that value, kept in the field's metadata for rendering."""
    return field(default=default, metadata={"unit": unit, "why": why})


@dataclass(frozen=True)
class S3Settings:
    """The S3 client's time budget, and the sizes of what the pipeline reads and writes."""

    connect_timeout_seconds: float = setting(
        3.0, "s", "Each S3 call waits at most this long for a connection. Part of the S3 time budget: one call "
        "that never gets an answer fails within attempts x (connect + read) + backoff, inside the serve "
        "stage's start-up limit (docs/reliability.md has the arithmetic).")
    read_timeout_seconds: float = setting(
        18.0, "s", "Each S3 call waits at most this long for each read. With max_attempts the attempts' read "
        "windows span 4 x 18 = 72 s, so a 70 s stall of S3 is ridden out, yet a call that never gets an "
        "answer fails inside the serve stage's start-up limit.")
    max_attempts: int = setting(
        4, "attempts", "Attempts per call in botocore's standard retry mode: 503 SlowDown three times or a "
        "reset connection is retried, and the worst case still fits the start-up limit.")
    max_backoff_seconds: float = setting(
        20.0, "s", "botocore's standard retry mode waits at most 2 ** (n - 1) s, capped at this, before "
        "retry n (botocore's value, mirrored to compute the worst case).")
    serve_deadline_seconds: float = setting(
        100.0, "s", "All of the serve stage's S3 work (listing, reading the model and its report) must end "
        "this long after the stage starts, or the stage fails with one ERROR line naming this deadline: "
        "per-read timeouts do not bound an S3 that answers a byte every few seconds. At least one call's "
        "worst case, so that the retries can still ride out a stall, and 20 s inside the start-up limit "
        "for the clone, Bodywork's pip step, the imports and the warm-up.")
    train_deadline_seconds: float = setting(
        440.0, "s", "All of the train stage's S3 work must end this long after the stage starts (training "
        "included: the 100,000-row week trained in 90 s, docs/benchmarks.md), or the stage fails with one "
        "ERROR line naming this deadline; 60 s inside the stage's job limit, so the line is written before "
        "Kubernetes ends the job.")
    max_dataset_bytes: int = setting(
        32 * MIB, "B", "A usual week's CSV is about 21 KB and the largest benchmarked (100,000 rows) about "
        "2 MB; a file beyond this is not a week of orders, and is refused before it is read into memory.")
    min_part_bytes: int = setting(
        5 * MIB, "B", "S3's smallest part of a multipart upload, except the last one.")
    default_part_bytes: int = setting(
        8 * MIB, "B", "The part size batch scoring writes its output in, above S3's minimum part size.")
    abort_retry_seconds: float = setting(
        120.0, "s", "A multipart upload that failed is aborted, the abort retried for up to this long: the "
        "S3 that failed a part (a minute of 503 SlowDown) may fail the abort's first attempts too. Far "
        "inside the batch Job's deadline (deploy/kubernetes/batch-job.yaml); what is left after it, the "
        "bucket's lifecycle rule removes (docs/deployment.md).")
    abort_after_stop_seconds: float = setting(
        10.0, "s", "After SIGTERM, each of batch scoring's two uploads (output and rejects) is aborted, "
        "retried for up to this long: both inside Kubernetes' grace period before SIGKILL.")
    default_read_bytes: int = setting(
        1 * MIB, "B", "The chunk batch scoring reads its input in: memory does not grow with the file.")
    max_bucket_name_chars: int = setting(
        63, "characters", "S3's own limit on a bucket's name. A longer BUCKET argument is refused at once, quoted "
        "cut short, so that no log line echoes an unbounded name in every s3:// URI it writes.")
    max_key_bytes: int = setting(
        1024, "B", "S3's own limit on an object key (UTF-8). A longer key argument (batch scoring's INPUT_KEY "
        "or OUTPUT_KEY) is refused at once, quoted cut short, before any S3 call or log line echoes it.")

    def worst_case_call_seconds(self) -> float:
        """The longest one S3 call can take before it fails: every attempt waits out both timeouts
        (a slow connection, then no answer), with the most backoff between attempts."""
        backoff = sum(min(2.0 ** (retry - 1), self.max_backoff_seconds) for retry in range(1, self.max_attempts))
        return self.max_attempts * (self.connect_timeout_seconds + self.read_timeout_seconds) + backoff


@dataclass(frozen=True)
class LayoutSettings:
    """The bucket's layout: prefixes, file stems and suffixes, and the S3 metadata keys."""

    datasets_prefix: str = setting(
        "datasets/", "", "Where data engineering drops each week's CSV (the product's contract).")
    models_prefix: str = setting(
        "models/", "", "Model artefacts, and nothing else, never overwritten (the product's contract).")
    registry_prefix: str = setting(
        "registry/", "", "The registry's records: who rejected or restored a model, when and why.")
    reports_prefix: str = setting(
        "reports/", "", "Each training run's report: report.json, the plots and report.html.")
    predictions_prefix: str = setting(
        _PREDICTIONS_PREFIX, "", "The backfill's estimates for each week, and its summary.")
    stream_dead_letters_prefix: str = setting(
        "stream-dead-letters/", "", "Stream records that could not be scored: one JSON-lines object per batch, "
        "under <source>/<shard>/ (docs/streaming.md).")
    stream_checkpoints_prefix: str = setting(
        "stream-checkpoints/", "", "The stream consumer's checkpoints: one small JSON object per consumer name, "
        "input stream and shard, holding the shard's last processed sequence number.")
    dataset_file_stem: str = setting(
        "time_to_dispatch", "", "The name data engineering's files start with, before their timestamp.")
    model_file_stem: str = setting(
        "time_to_dispatch", "", "The name a model artefact's key starts with, before its timestamp and id.")
    backtest_key: str = setting(
        f"{_PREDICTIONS_PREFIX}backtest.json", "", "The backfill's summary: how good each week's estimates were.")
    backtest_plot_key: str = setting(
        f"{_PREDICTIONS_PREFIX}backtest_mae.png", "", "The backfill's plot of weekly MAE over time.")
    rejects_suffix: str = setting(
        ".rejects.csv", "", "Batch scoring writes the rows it cannot score to OUTPUT_KEY + this (the "
        "product's contract).")
    clock_skew_allowance_hours: float = setting(
        1.0, "h", "Keys dated later than now plus this are ignored: clocks differ a little, never by hours, "
        "and one mistyped 2099 must not stay \"newest\" for ever.")
    sha256_metadata_key: str = setting(
        "sha256", "", "The S3 metadata key of a model artefact's SHA-256 (S3 stores it as x-amz-meta-*).")
    signature_metadata_key: str = setting(
        "signature", "", "The S3 metadata key of a model artefact's HMAC-SHA256 signature.")
    key_id_metadata_key: str = setting(
        "signing-key-id", "", "The S3 metadata key of the id of the key that signed a model artefact.")
    signature_scheme_metadata_key: str = setting(
        "signature-scheme", "", "The S3 metadata key of what a model artefact's signature covers "
        "(ARTEFACT.signature_scheme); artefacts signed over their bytes only have none.")
    model_id_metadata_key: str = setting(
        "model-artefact-id", "", "Metadata of a scored object: the artefact id of the model that made its "
        "estimates.")
    model_version_metadata_key: str = setting(
        "model-version", "", "Metadata of a scored object: the version of the model that made its estimates.")
    input_metadata_key: str = setting(
        "input-key", "", "Metadata of a scored object: the key of the input it was scored from.")
    input_etag_metadata_key: str = setting(
        "input-etag", "", "Metadata of a scored object: the ETag of the input it was scored from, so the "
        "backfill knows a week is done.")

    @property
    def reserved_prefixes(self) -> Tuple[str, ...]:
        """Prefixes that hold the pipeline's own objects: batch scoring's OUTPUT_KEY is never under
        one (the service serves reports as HTML; the backfill trusts what is under predictions/)."""
        return (self.datasets_prefix, self.models_prefix, self.registry_prefix, self.reports_prefix,
                self.predictions_prefix, self.stream_dead_letters_prefix, self.stream_checkpoints_prefix)


@dataclass(frozen=True)
class ApiSettings:
    """The service's paths: the product's contract with the shop's platform."""

    version: str = setting(
        _API_VERSION, "", "The API's version, in its paths and its OpenAPI schema (the product's contract).")
    predict_path: str = setting(
        f"{_API_PREFIX}/time_to_dispatch", "", "One prediction (the product's contract).")
    predict_batch_path: str = setting(
        f"{_API_PREFIX}/time_to_dispatch/batch", "", "A batch of predictions (the product's contract).")
    model_path: str = setting(
        f"{_API_PREFIX}/model", "", "The served model's lineage.")
    model_report_path: str = setting(
        f"{_API_PREFIX}/model/report", "", "The served model's HTML report (the product's contract).")
    health_path: str = setting(
        "/health", "", "Liveness.")
    ready_path: str = setting(
        "/ready", "", "Readiness: a model is loaded and warmed up.")
    metrics_path: str = setting(
        "/metrics", "", "Prometheus metrics, on by default (the product's contract).")
    docs_path: str = setting(
        "/docs", "", "FastAPI's OpenAPI page, Swagger UI (the product's contract).")
    docs_assets_path: str = setting(
        "/docs/assets", "", "Where the service serves the documentation pages' scripts, stylesheets and icon "
        "itself, so that the pages work without internet access (docs/api.md).")
    report_content_security_policy: str = setting(
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'", "", "The model report's Content-Security-Policy: the page is text, inline "
        "style and plots embedded as data: URLs, so the browser loads nothing else and runs no script, "
        "whatever the HTML in the bucket holds.")


@dataclass(frozen=True)
class ServeSettings:
    """The serve stage: request limits, the stop, and the pod Bodywork runs it in."""

    default_host: str = setting(
        "0.0.0.0", "", "The service listens on every interface by default (the product's contract).")
    default_port: int = setting(
        8000, "", "The service's TCP port (the product's contract; bodywork.yaml's serve port).")
    max_batch_size: int = setting(
        1000, "items", "A batch request holds 1 to this many requests (the product's contract).")
    max_body_bytes: int = setting(
        1 * MIB, "B", "Larger bodies are answered 413 before anything parses them. The largest valid body, "
        "pretty-printed with a 4-space indent, is about 105 KB (1,000 items of about 105 bytes); the limit "
        "leaves ten times that.")
    hot_path_max_body_bytes: int = setting(
        4 * KIB, "B", "The largest body the hot path tries to answer; a larger one goes to the stock route "
        "whole, which answers it alike. A valid single prediction is under 200 bytes; a large body is "
        "nearly always invalid (e.g. 90,000 unknown fields), and the hot path trying it first would parse "
        "it twice, holding the event loop twice as long.")
    body_timeout_seconds: float = setting(
        10.0, "s", "A body not arrived this long after the request started is answered 408. A valid body of "
        "at most a megabyte arrives in well under a second on any link the shop's platform uses; ten seconds "
        "is generous and still ends a stalled request long before the graceful shutdown gives up on it.")
    keep_alive_timeout_seconds: int = setting(
        5, "s", "An idle keep-alive connection is closed after this long (uvicorn's default, made explicit).")
    max_header_bytes: int = setting(
        16 * KIB, "B", "A request head (its request line and headers) may be at most this large, on both server "
        "stacks (h11's incomplete-event limit; on httptools counted by pipeline/serve/connections.py): larger "
        "is answered 431, or 400 by h11, and the connection closed. A request line and a few headers need "
        "well under 1 KB.")
    max_errors_reported: int = setting(
        20, "errors", "A 422 lists at most this many validation errors, then one that counts the rest: a "
        "1 MB body of 90,000 unknown fields once made a 9 MB answer that took the event loop seconds. An "
        "object with more fields than this over the request's own is refused as a whole, before each field "
        "is checked.")
    head_timeout_seconds: float = setting(
        10.0, "s", "A request head not fully arrived this long after its first byte (or after the connection "
        "opened) is answered 408 and the connection closed, as a slow body is: sockets that never finish "
        "their head cannot hold connections for longer than that. The same ten seconds as body_timeout_seconds.")
    max_concurrent_requests: int = setting(
        64, "requests", "At most this many requests running at once, beyond which the service answers 503. "
        "Each may buffer up to max_body_bytes, so this bounds buffered bodies to 64 MiB over the service's "
        "own memory: inside the pod's memory request. Connections whose head is still arriving are not "
        "requests yet, so they cannot shut other clients out.")
    max_open_connections: int = setting(
        1024, "connections", "At most this many connections open at once; a new one beyond it is closed at "
        "once. Each holds at most a head (max_header_bytes) until it becomes a request, so they take at most "
        "16 MiB; the head timeout closes those that never finish.")
    refusal_log_interval_seconds: float = setting(
        60.0, "s", "Refused connections and requests (503, 408, 431, over the open-connection limit) are "
        "logged as one WARNING with their counts at most this often, the first at once: a flood of refusals "
        "must not grow the log by a line each.")
    listen_backlog: int = setting(
        2048, "connections", "uvicorn's default backlog of connections waiting to be accepted.")
    graceful_shutdown_seconds: int = setting(
        20, "s", "After SIGTERM (and the drain) requests still running after this long are cancelled, so "
        "that the process exits cleanly before Kubernetes kills it: drain + this, inside the 30 s grace.")
    max_drain_seconds: int = setting(
        8, "s", "The most --drain-seconds may ask for (bodywork.yaml gives 5): how long the service goes on "
        "serving after SIGTERM while the cluster stops sending it new connections; with the graceful "
        "shutdown it must end inside Kubernetes' 30 s grace period.")
    tree_walk_tolerance: float = setting(
        1e-9, "h", "Predictions from the exact pure-Python tree walk and from the estimator must agree to "
        "this, or the model is not served.")
    max_startup_time_seconds: int = setting(
        120, "s", "bodywork.yaml's serve_model.service.max_startup_time_seconds, mirrored (a test checks they "
        "are equal): the clone, Bodywork's pip step and the service's cold start (about 4 s) must fit; the "
        "S3 time budget must fit too.")
    memory_request_mb: int = setting(
        384, "MB", "bodywork.yaml's serve_model.memory_request_mb, mirrored (a test checks they are equal): "
        "1.8x the service's measured resident memory (docs/deployment.md).")
    resident_memory_mb: int = setting(
        190, "MB", "The service's own memory besides buffered request bodies, as the connection limit's "
        "budget counts it (docs/reliability.md, \"Request limits\").")
    termination_grace_seconds: int = setting(
        30, "s", "Kubernetes' default grace period between SIGTERM and SIGKILL; bodywork.yaml does not "
        "change it.")


@dataclass(frozen=True)
class ArtefactSettings:
    """The model artefact: what it may claim, what it accepts, how it is stored and signed."""

    max_accepted_orders_placed: float = setting(
        1e9, "orders", "The largest orders_placed the service and batch scoring accept. The tree compares "
        "features as float32 (largest about 3.4e38, beyond which scikit-learn's predict fails); a day never "
        "sees a billion orders, so anything above is an input error.")
    max_trained_orders_placed: int = setting(
        100_000, "orders", "Warm-up walks every half order up to the largest orders_placed seen in training; a "
        "week has about 320, so a model claiming more than this is not one the train stage made.")
    pickle_protocol: int = setting(
        4, "", "The pickle protocol artefacts are written with; every supported Python reads it.")
    min_secret_chars: int = setting(
        32, "characters", "The shortest signing secret accepted (`openssl rand -hex 32` makes one of 64).")
    signature_scheme: str = setting(
        "2", "", "What an artefact's signature covers: scheme 2 is the artefact's key (which names its "
        "timestamp and id) and the SHA-256 of its bytes, so a copy at another key does not verify. "
        "Artefacts signed over their bytes only (no scheme in their metadata) are refused.")
    max_artefact_bytes: int = setting(
        16 * MIB, "B", "A model artefact larger than this is refused from its Content-Length before its body "
        "is read, and the train stage persists none larger. Loading costs about four times the pickle (its "
        "bytes, the unpickled tree, the tree walk's lists): 16 MiB makes about 70 MB, which fits beside the "
        "serve stage's own memory and the connections' buffered bodies in the pod's memory request "
        "(check_budgets). A depth-10 tree, the deepest the grid names, pickles to well under 1 MB.")
    artefact_load_factor: int = setting(
        4, "x", "How many times an artefact's size loading it takes in memory, at most: its bytes, the "
        "unpickled estimator, and the tree walk's Python lists (about twice the tree's arrays).")
    min_id_prefix: int = setting(
        4, "characters", "The shortest start of an artefact id that may name a model in the registry CLI "
        "and batch scoring.")


@dataclass(frozen=True)
class TrainSettings:
    """The train stage: the split, the search, the logic checks and the champion gate."""

    test_size: float = setting(
        0.2, "fraction", "The data scientist's 80/20 split, stratified by product code (the product brief).")
    random_state: int = setting(
        42, "", "The data scientist's seed, for the split and every tree (the product brief).")
    cv_folds: int = setting(
        5, "folds", "The data scientist's 5-fold grid search on r² (the product brief).")
    min_rows_per_product: int = setting(
        10, "rows", "Each product needs enough rows for a stratified 80/20 split that leaves every fold of "
        "the 5-fold search some of its rows to learn from.")
    check_orders_low: int = setting(
        100, "orders", "The logic check: every product's estimate at check_orders_high must be above its "
        "estimate here (the product brief).")
    check_orders_high: int = setting(
        150, "orders", "The logic check: every product's estimate here must be above its estimate at "
        "check_orders_low (the product brief).")
    max_estimate_to_label_ratio: float = setting(
        1.25, "ratio", "The logic check: no estimate on the test set above this times the largest test label "
        "(the product brief).")
    parallel_min_train_rows: int = setting(
        3200, "rows", "Below this many training rows a pool of worker processes costs more to start than it "
        "saves; from it on, use every core. The measured crossover on the production machine size (2 cores): "
        "docs/benchmarks.md, \"Parallelism crossover\".")
    max_product_code_chars: int = setting(
        64, "characters", "A product code (spaces around it trimmed) may be at most this long, or the week is "
        "refused: the shop's codes are like SKU001, and every code a model holds is in its OpenAPI schema, "
        "its metrics' labels and the 422 of an unknown code, so a 130,000-character one must never go live.")
    product_code_pattern: str = setting(
        "[A-Za-z0-9._/-]+", "regex", "The characters a product code may hold (ASCII letters, digits, `.`, "
        "`_`, `-`, `/`), or the week is refused: codes end up in URLs, metric labels, log lines and HTML "
        "reports, where markup, spaces or control characters would need escaping or mislead.")
    progress_interval_seconds: float = setting(
        30.0, "s", "A long search logs how many of its fits are done at most this often.")
    max_completion_time_seconds: int = setting(
        500, "s", "bodywork.yaml's train_model.batch.max_completion_time_seconds, mirrored (a test checks they "
        "are equal): the train stage's job limit; its S3 deadline must fit inside it.")
    calibrate: bool = setting(
        True, "", "Serve the isotonic calibration of the tree (non-decreasing in orders_placed per product) "
        "rather than the tree itself; `--no-calibration` on the train CLI turns it off for a run. On the "
        "benchmark's weeks it lowered the test MAE and removed every dip (docs/data-and-model.md).")
    calibration_step_orders: float = setting(
        1.0, "orders", "Between two training values of orders_placed the calibration steps along the isotonic "
        "fit's linear interpolation at every whole order (orders_placed is a count). On 30 tuning weeks "
        "(seeds 200-229) that lowered the served MAE from 0.924x to 0.889x the tree's, against the nearer "
        "training value's (docs/data-and-model.md).")
    calibration_max_steps: int = setting(
        2_000, "steps", "... but a product whose training range spans more than this many steps is stepped "
        "this many times evenly across it, so that its breakpoints (pickled with the model, listed in its "
        "lineage) stay few: 2,000 breakpoints and their values pickle to about 36 KB. The synthetic weeks' "
        "ranges span at most 320.")
    default_upper_coverage: float = setting(
        0.9, "fraction", "The coverage the upper bound is fitted for (`--upper-coverage`): the share of next "
        "week's orders meant to be dispatched within upper_hours_to_dispatch, \"9 orders in 10\".")
    dips_step_orders: float = setting(
        0.5, "orders", "The served estimate's dips are counted at every half order (docs/data-and-model.md).")
    dips_beyond_orders: float = setting(
        20.0, "orders", "... from 0 to this many orders past the largest orders_placed of the week, where "
        "requests are flagged extrapolated.")
    default_champion_tolerance: float = setting(
        0.20, "ratio", "How much worse than the champion's MAE, relatively, the challenger's may be on the same "
        "rows before it is refused. From benchmarks/governance.py: on 40 pairs of healthy weeks no challenger "
        "was refused (the worst was 15.9% worse; 0.10 refused 7.5% of them), and one 25% worse always is.")


@dataclass(frozen=True)
class DriftSettings:
    """The drift statistics' thresholds (docs/governance.md says where each comes from)."""

    psi_bins: int = setting(
        10, "bins", "The PSI of orders_placed is over ten bins cut at the reference week's deciles.")
    psi_floor: float = setting(
        1e-4, "share", "A share never observed counts as this share, so that a bin empty in one week gives a "
        "large but finite PSI.")
    orders_psi_threshold: float = setting(
        0.2, "PSI", "The PSI of orders_placed over the whole week above which it drifted.")
    product_orders_psi_threshold: float = setting(
        0.3, "PSI", "The same for one product's rows: about a fifth of the week, so its PSI is noisier and the "
        "threshold higher.")
    ks_p_value_threshold: float = setting(
        0.001, "p-value", "The KS test's p-value below which a distribution counts as changed. Six KS tests "
        "run each week (overall and five products), so each uses a strict level.")
    product_mix_psi_threshold: float = setting(
        0.1, "PSI", "The PSI of the product codes' shares above which the product mix drifted.")
    performance_mae_ratio_threshold: float = setting(
        1.3, "ratio", "The live model's MAE on the new week over its recorded test MAE, overall, above which "
        "performance drifted.")
    product_performance_mae_ratio_threshold: float = setting(
        1.6, "ratio", "The same for one product's rows (fewer rows, noisier).")
    min_product_rows: int = setting(
        50, "rows", "A product needs this many rows (in both weeks) for statistics of its own.")


@dataclass(frozen=True)
class TrackingSettings:
    """Experiment tracking in MLflow (optional, off unless MLFLOW_TRACKING_URI is set): its client's
    time budget inside the train stage's job limit (docs/governance.md)."""

    http_timeout_seconds: int = setting(
        5, "s", "Each request of the MLflow client waits at most this long (MLFLOW_HTTP_REQUEST_TIMEOUT, "
        "default 120 s): a tracking server that answers in well under a second does not need more, and a "
        "hanging one costs seconds, not minutes.")
    http_max_retries: int = setting(
        1, "retries", "The MLflow client retries a failed request this often (MLFLOW_HTTP_REQUEST_MAX_RETRIES, "
        "default 7 with exponential backoff: minutes against a server that is down).")
    http_backoff_factor: int = setting(
        1, "s", "The MLflow client's backoff before its retry (MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, default 2).")
    budget_seconds: float = setting(
        20.0, "s", "All of a train run's tracking (the run, its artifacts, the model version, the alias) must "
        "end this long after it starts, or it is abandoned with one WARNING. It starts after the stage's S3 "
        "deadline has ended, so the deadline plus this fits the stage's job limit, with 40 s to spare.")
    max_key_chars: int = setting(
        250, "characters", "MLflow's longest parameter, metric and tag key; longer keys are cut.")
    max_value_chars: int = setting(
        5000, "characters", "Parameter and tag values are cut to this (MLflow refuses longer tag values on "
        "some backends); a refused run's gates are in its report.json in full.")


@dataclass(frozen=True)
class BatchSettings:
    """Batch scoring."""

    default_max_reject_fraction: float = setting(
        0.01, "fraction", "More rejected rows than this fraction fail the run (--max-reject-fraction).")
    default_chunk_rows: int = setting(
        50_000, "rows", "Rows parsed, validated and scored at a time, so memory does not grow with the file.")
    progress_seconds: float = setting(
        5.0, "s", "A long scoring run logs its progress at most this often.")


@dataclass(frozen=True)
class StreamSettings:
    """Streaming predictions: Kinesis' limits, the output's retries, the dead letters, the Lambda handler,
    the consumer on Kubernetes."""

    # --- the streaming core and the Lambda handler ---
    max_put_records_entries: int = setting(
        500, "records", "Kinesis' most records in one PutRecords call: predictions are written in calls of at most "
        "this many.")
    max_put_records_bytes: int = setting(
        5 * MIB, "B", "Kinesis' most bytes in one PutRecords call (data and partition keys): a call is closed "
        "before it would pass this.")
    max_record_bytes: int = setting(
        1 * MIB, "B", "Kinesis' largest record (data and partition key). A prediction that would be larger (an "
        "event near the limit, plus the prediction's fields) is dead-lettered, never sent to be refused with "
        "its whole call.")
    max_partition_key_chars: int = setting(
        256, "characters", "Kinesis' longest partition key; order_id is the output's partition key, so an "
        "event whose order_id is longer is dead-lettered.")
    put_attempts: int = setting(
        5, "attempts", "PutRecords attempts for the entries a partial failure names (throttling on a hot "
        "shard): the first call and four retries of the failed entries only. Entries still failed after them "
        "are reported unwritten, and the caller does not acknowledge them (Lambda retries from the first).")
    put_backoff_seconds: float = setting(
        0.1, "s", "The wait before the first retry of failed entries, doubled before each next one: Kinesis "
        "counts a shard's throughput per second, so a few tenths of a second lets the next second's quota in.")
    max_put_backoff_seconds: float = setting(
        2.0, "s", "The longest wait between two attempts; all the waits together are 0.1 + 0.2 + 0.4 + 0.8 = "
        "1.5 s, far inside a Lambda's timeout.")
    kinesis_connect_timeout_seconds: float = setting(
        3.0, "s", "Each Kinesis call waits at most this long for a connection (as S3's calls do).")
    kinesis_read_timeout_seconds: float = setting(
        10.0, "s", "Each Kinesis call waits at most this long for each read: a PutRecords of 5 MiB is answered "
        "in well under a second.")
    kinesis_max_attempts: int = setting(
        3, "attempts", "botocore's standard retry mode's attempts per Kinesis call (a reset connection, a 500); "
        "entries a PutRecords answer marks failed are retried by the core itself (put_attempts).")
    lambda_source: str = setting(
        "lambda", "", "The Lambda handler's dead letters go under the dead-letter prefix in this folder, then "
        "one folder per shard.")
    lambda_bucket_variable: str = setting(
        "TIME_TO_DISPATCH_BUCKET", "", "The Lambda handler's environment variable naming the bucket whose "
        "live model it serves and where it writes dead letters.")
    lambda_output_stream_variable: str = setting(
        "TIME_TO_DISPATCH_OUTPUT_STREAM", "", "The Lambda handler's environment variable naming the stream it "
        "writes predictions to.")

    # --- the consumer on Kubernetes (pipeline/streaming/consumer.py, `python -m pipeline.stream_predict`) ---
    consumer_default_port: int = setting(
        8001, "", "The consumer's HTTP port for /metrics, /ready and /health: beside the serve stage's 8000.")
    consumer_default_name: str = setting(
        "stream-predict", "", "The consumer's name when --consumer-name is not given: its checkpoints and dead "
        "letters are filed under it, so two consumers of one stream with different names keep apart.")
    consumer_name_pattern: str = setting(
        "[A-Za-z0-9_.-]{1,128}", "regex", "What a consumer name and a stream name may be (Kinesis' own rule for "
        "stream names): both become parts of S3 keys.")
    get_records_limit: int = setting(
        500, "records", "Records asked for in one GetRecords call, a batch: one put_records call at most (500 "
        "entries). It is also the duplicate bound: after a crash at most this many records per shard are "
        "processed again.")
    max_get_records_limit: int = setting(
        10_000, "records", "Kinesis' own largest GetRecords Limit.")
    start_positions: Tuple[str, ...] = setting(
        ("TRIM_HORIZON", "LATEST"), "", "Where a shard without a checkpoint is first read from: TRIM_HORIZON "
        "(the default: the oldest record kept, so nothing is lost) or LATEST (only records put from now on).")
    min_read_interval_seconds: float = setting(
        0.2, "s", "A shard is read at most five times a second: Kinesis' limit of five GetRecords calls per "
        "shard per second, shared by every consumer of the stream.")
    idle_poll_seconds: float = setting(
        0.5, "s", "After a read that found nothing new the shard is read again this long later: low latency "
        "without spending the read limit on an idle stream.")
    shard_refresh_seconds: float = setting(
        10.0, "s", "The shards are listed again this often, to find new shards after a reshard and which "
        "shards were closed.")
    backoff_seconds: float = setting(
        0.5, "s", "The first wait after a throttled read or a batch whose predictions were not all written; "
        "doubled at each failure in a row.")
    max_backoff_seconds: float = setting(
        10.0, "s", "The longest wait between two reads of a throttled shard.")
    give_up_seconds: float = setting(
        120.0, "s", "Kinesis failing (not throttling) for this long in a row ends the consumer with one ERROR "
        "line and exit code 1: Kubernetes restarts it, and it resumes from its checkpoints.")
    stop_seconds: float = setting(
        25.0, "s", "After SIGTERM the batch in flight is finished and checkpointed; a stop not done this long "
        "after the signal exits with one ERROR line and code 1 without checkpointing that batch (it is read "
        "again after the restart): inside Kubernetes' 30 s grace period with 5 s to spare.")
    ready_timeout_seconds: float = setting(
        60.0, "s", "How long the local run waits for its consumer's /ready.")
    local_input_stream: str = setting(
        "time-to-dispatch-orders", "", "The local run's input stream (--with-stream).")
    local_output_stream: str = setting(
        "time-to-dispatch-predictions", "", "The local run's output stream (--with-stream).")
    local_input_shards: int = setting(
        2, "shards", "The local run's input stream has two shards, so the consumer reads more than one.")
    local_read_back_seconds: float = setting(
        30.0, "s", "How long the local run waits to read its example predictions back from the output stream.")


@dataclass(frozen=True)
class LocalSettings:
    """The local run and the local S3 server; the synthetic data that follows the notebook's facts."""

    repo_root: Path = setting(
        Path(__file__).resolve().parents[1], "", "The repository's root: the local run's working directory, "
        "where its virtualenv and requirement files are.")
    venv_dir_name: str = setting(
        ".venv", "", "The project's virtualenv, in the repository's root.")
    requirement_file_names: Tuple[str, ...] = setting(
        ("requirements_pipe.txt", "requirements_cicd.txt", "requirements_mlflow.txt"), "", "What the local run's "
        "virtualenv installs (the last: the MLflow server that --with-mlflow starts).")
    mlflow_folder_name: str = setting(
        ".local_run/mlflow", "", "Where --with-mlflow's tracking server keeps its SQLite database, its artifacts "
        "and its log, in the repository's root (ignored by git); kept between runs, so past runs stay visible.")
    mlflow_start_timeout_seconds: float = setting(
        120.0, "s", "How long the local run waits for its MLflow server's port to open (about 20 s here).")
    stamp_file_name: str = setting(
        ".time_to_dispatch_requirements.sha256", "", "Written into the virtualenv after a successful install: "
        "the digest of the requirement files; the same digest next time means there is nothing to install.")
    pip_log_file_name: str = setting(
        "pip-install.log", "", "pip's output during the bootstrap, in the virtualenv.")
    loopback_host: str = setting(
        "127.0.0.1", "", "The local S3 server and the local run's service listen on loopback only.")
    region: str = setting(
        "eu-west-2", "", "The local S3 server's region.")
    bucket: str = setting(
        "time-to-dispatch-local", "", "The local run's bucket on the embedded S3.")
    default_weeks: int = setting(
        4, "weeks", "Synthetic weekly datasets the local run uploads.")
    r2_error_threshold: float = setting(
        0.9, "r²", "The local run's train stage threshold. The synthetic weeks give a test r² near 0.975, so "
        "with a warning threshold above it both branches are live: below 0.9 nothing is persisted.")
    r2_warning_threshold: float = setting(
        0.95, "r²", "Between the error threshold and this the model is persisted with a drift warning.")
    serve_start_timeout_seconds: float = setting(
        120.0, "s", "How long the local run waits for its service's port to open.")
    stop_timeout_seconds: float = setting(
        15.0, "s", "How long the local run waits for a child to stop after SIGTERM before SIGKILL.")
    http_timeout_seconds: float = setting(
        30.0, "s", "The local run's HTTP requests to its service.")
    batch_input_key: str = setting(
        "batch/orders.csv", "", "The file of orders the local run scores in batch.")
    batch_output_key: str = setting(
        "batch/orders_scored.csv", "", "Where the local run's batch scoring writes.")
    synthetic_rows_per_week: int = setting(
        1000, "rows", "About 1,000 orders a week (the notebook's facts).")
    synthetic_mean_orders_placed: float = setting(
        73.0, "orders", "orders_placed is a skewed count with a mean near 73 (the notebook's facts).")
    synthetic_max_orders_placed: int = setting(
        320, "orders", "orders_placed goes from 0 to about 320 (the notebook's facts).")
    synthetic_noise_sd_hours: float = setting(
        1.0, "h", "Homoscedastic noise with sd 1 hour (the notebook's facts).")
    synthetic_first_drop: datetime = setting(
        datetime(2026, 10, 2, 23, 0, 0, tzinfo=timezone.utc), "UTC",
        "Data engineering drops each week's file on Friday at 23:00 UTC; the synthetic weeks start here.")

    @property
    def venv_dir(self) -> Path:
        return self.repo_root / self.venv_dir_name

    @property
    def requirement_files(self) -> Tuple[Path, ...]:
        return tuple(self.repo_root / name for name in self.requirement_file_names)


@dataclass(frozen=True)
class MessageSettings:
    """How much of a value from outside the log lines and errors quote."""

    quote_prefix_chars: int = setting(
        100, "characters", "How much of a value from outside (a CSV cell, a request field, an S3 key or "
        "metadata value) a log line or an error message quotes: enough to recognise it, never megabytes.")
    max_codes_named: int = setting(
        5, "codes", "How many unknown product codes an error names; the rest are counted.")
    max_argument_error_chars: int = setting(
        1000, "characters", "The longest a command line's parse error may be: argparse's own messages quote "
        "the arguments they refuse (`unrecognized arguments: ...`), so a longer one is cut, with its length.")


@dataclass(frozen=True)
class EnvironmentSettings:
    """The names of the environment variables the pipeline reads or sets."""

    signing_key: str = setting(
        "MODEL_SIGNING_KEY", "", "The model signing keys, KEY_ID:SECRET[,...] (in production a Kubernetes "
        "secret; the product's contract).")
    git_commit: str = setting(
        "GIT_COMMIT_HASH", "", "The pipeline's git commit, set by Bodywork, recorded in a model's lineage.")
    aws_endpoint_url: str = setting(
        "AWS_ENDPOINT_URL", "", "boto3's standard variable selecting an S3-compatible server.")
    aws_default_region: str = setting(
        "AWS_DEFAULT_REGION", "", "boto3's standard region variable.")
    aws_access_key_id: str = setting(
        "AWS_ACCESS_KEY_ID", "", "boto3's standard credential variable.")
    aws_secret_access_key: str = setting(
        "AWS_SECRET_ACCESS_KEY", "", "boto3's standard credential variable.")
    aws_identity_variables: Tuple[str, ...] = setting(
        ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"), "", "Settings that would send boto3 to a "
        "real AWS account: dropped when pointing at the local S3 server.")
    s3_connect_timeout: str = setting(
        "S3_CONNECT_TIMEOUT_SECONDS", "", "Overrides S3.connect_timeout_seconds, for tests only.")
    s3_read_timeout: str = setting(
        "S3_READ_TIMEOUT_SECONDS", "", "Overrides S3.read_timeout_seconds, for tests only.")
    s3_max_attempts: str = setting(
        "S3_MAX_ATTEMPTS", "", "Overrides S3.max_attempts, for tests only.")
    s3_deadline: str = setting(
        "S3_DEADLINE_SECONDS", "", "Overrides S3.serve_deadline_seconds and S3.train_deadline_seconds, for tests "
        "only.")
    reexecuted: str = setting(
        "TIME_TO_DISPATCH_REEXECUTED", "", "Set by the local run when it re-executes itself in its virtualenv, "
        "so that it does not do so twice.")
    no_proxy_variables: Tuple[str, ...] = setting(
        ("NO_PROXY", "no_proxy"), "", "Hosts that bypass a proxy from the environment: loopback traffic must "
        "never go through one.")
    python_path: str = setting(
        "PYTHONPATH", "", "The local run puts the repository's root on it for its children.")
    mlflow_tracking_uri: str = setting(
        "MLFLOW_TRACKING_URI", "", "MLflow's standard variable: the tracking server. Unset, nothing is tracked.")
    mlflow_experiment_name: str = setting(
        "MLFLOW_EXPERIMENT_NAME", "", "MLflow's standard variable: the experiment a train run is logged to "
        "(default: the bucket's name).")
    mlflow_registered_model_name: str = setting(
        "MLFLOW_REGISTERED_MODEL_NAME", "", "The registered model whose versions are the persisted models "
        "(default: the artefacts' name, time-to-dispatch).")
    mlflow_client_variables: Tuple[str, ...] = setting(
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"),
        "", "The MLflow client's own variables for its timeout, retries and backoff: set from TRACKING unless "
        "already set.")
    mlflow_quiet_variables: Tuple[str, ...] = setting(
        ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "MLFLOW_CONFIGURE_LOGGING"), "", "Set to true and false: "
        "the MLflow client prints no run URL on stdout and installs no log handler of its own, so every line "
        "the train stage writes keeps the log format.")


@dataclass(frozen=True)
class Settings:
    """Every group of settings."""

    s3: S3Settings = field(default_factory=S3Settings)
    layout: LayoutSettings = field(default_factory=LayoutSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    artefact: ArtefactSettings = field(default_factory=ArtefactSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    local: LocalSettings = field(default_factory=LocalSettings)
    messages: MessageSettings = field(default_factory=MessageSettings)
    environment: EnvironmentSettings = field(default_factory=EnvironmentSettings)


class BudgetError(ValueError):
    """Two settings that depend on each other do not fit; the message names both numbers."""


def check_budgets(settings: Settings) -> None:
    """Assert the budgets that depend on each other, together.

    - the S3 client's worst case for one call (every attempt waits out both timeouts, plus the
      largest backoff) fits the serve stage's start-up limit: a hanging S3 fails the stage with
      an ERROR line instead of Kubernetes killing it silently;
    - each stage's one overall S3 deadline is at least the worst case of one call and ends
      inside the stage's limit (the serve stage's 20 s before its start-up limit, for the
      clone, the pip step and the warm-up; the train stage's 60 s before its job limit);
    - the train stage's S3 deadline and then its experiment tracking's budget fit its job limit
      with 40 s to spare: a slow tracking server never costs the week;
    - batch scoring's two aborts after SIGTERM fit Kubernetes' grace period, with 5 s to spare;
      so does the stream consumer's stop (its batch in flight finished and checkpointed);
    - the drain plus the graceful stop fit Kubernetes' grace period: the service exits cleanly
      before SIGKILL;
    - every request buffering the largest body and head, and every other open connection
      the largest head, plus the service's own memory, fit the serve pod's memory request, and
      so does loading the largest model artefact accepted beside them.

    Raises:
        BudgetError: a budget does not fit, naming both numbers.
    """
    s3, serve = settings.s3, settings.serve
    worst_s3 = s3.worst_case_call_seconds()
    if worst_s3 > serve.max_startup_time_seconds:
        raise BudgetError(
            f"the S3 time budget, {worst_s3:g} s for one call ({s3.max_attempts} x ({s3.connect_timeout_seconds:g} + "
            f"{s3.read_timeout_seconds:g}) s + backoff), is over the serve stage's start-up limit of "
            f"{serve.max_startup_time_seconds} s")
    for stage, deadline, limit, room in (
        ("serve", s3.serve_deadline_seconds, serve.max_startup_time_seconds, 20),
        ("train", s3.train_deadline_seconds, settings.train.max_completion_time_seconds, 60),
    ):
        if not worst_s3 <= deadline <= limit - room:
            raise BudgetError(
                f"the {stage} stage's S3 deadline, {deadline:g} s, must be at least the S3 time budget of one call "
                f"({worst_s3:g} s) and at most its limit of {limit} s less {room} s")
    train_limit, tracking = settings.train.max_completion_time_seconds, settings.tracking.budget_seconds
    if s3.train_deadline_seconds + tracking > train_limit - 40:
        raise BudgetError(
            f"the train stage's S3 deadline and its tracking budget, {s3.train_deadline_seconds:g} + {tracking:g} s, "
            f"do not fit its job limit of {train_limit} s with 40 s to spare")
    aborts = 2 * s3.abort_after_stop_seconds
    if aborts > serve.termination_grace_seconds - 5:
        raise BudgetError(
            f"the two aborts after SIGTERM, 2 x {s3.abort_after_stop_seconds:g} s, do not fit Kubernetes' grace "
            f"period of {serve.termination_grace_seconds} s with 5 s to spare")
    stop = serve.max_drain_seconds + serve.graceful_shutdown_seconds
    if stop > serve.termination_grace_seconds:
        raise BudgetError(
            f"the drain and the graceful stop, {serve.max_drain_seconds} + {serve.graceful_shutdown_seconds} = "
            f"{stop} s, are over Kubernetes' grace period of {serve.termination_grace_seconds} s")
    buffered = (serve.max_concurrent_requests * (serve.max_body_bytes + serve.max_header_bytes)
                + serve.max_open_connections * serve.max_header_bytes)
    memory = buffered + serve.resident_memory_mb * MB
    if memory > serve.memory_request_mb * MB:
        raise BudgetError(
            f"{serve.max_concurrent_requests} requests x ({serve.max_body_bytes:,} + {serve.max_header_bytes:,}) "
            f"bytes of body and head and {serve.max_open_connections} connections x {serve.max_header_bytes:,} "
            f"bytes of head, {buffered:,} bytes, plus the service's {serve.resident_memory_mb} MB, is "
            f"{memory:,} bytes: over the serve pod's memory request of {serve.memory_request_mb} MB")
    stream_stop = settings.stream.stop_seconds
    if stream_stop > serve.termination_grace_seconds - 5:
        raise BudgetError(
            f"the stream consumer's stop, {stream_stop:g} s, does not fit Kubernetes' grace period of "
            f"{serve.termination_grace_seconds} s with 5 s to spare")
    artefact = settings.artefact
    loading = artefact.artefact_load_factor * artefact.max_artefact_bytes
    if memory + loading > serve.memory_request_mb * MB:
        raise BudgetError(
            f"loading the largest artefact accepted, {artefact.artefact_load_factor} x "
            f"{artefact.max_artefact_bytes:,} bytes, beside the connections' {buffered:,} bytes and the service's "
            f"{serve.resident_memory_mb} MB, is {memory + loading:,} bytes: over the serve pod's memory request of "
            f"{serve.memory_request_mb} MB")


def environment_value(name: str, environ: Optional[Mapping[str, str]] = None) -> str:
    """An environment variable's value with surrounding spaces removed, "" when unset.

    Args:
        name: the variable's name (a field of `ENVIRONMENT`).
        environ: where to read it; this process's environment by default.
    """
    return (os.environ if environ is None else environ).get(name, "").strip()


SETTINGS = Settings()
check_budgets(SETTINGS)
S3 = SETTINGS.s3
LAYOUT = SETTINGS.layout
API = SETTINGS.api
SERVE = SETTINGS.serve
ARTEFACT = SETTINGS.artefact
TRAIN = SETTINGS.train
DRIFT = SETTINGS.drift
BATCH = SETTINGS.batch
STREAM = SETTINGS.stream
TRACKING = SETTINGS.tracking
LOCAL = SETTINGS.local
MESSAGES = SETTINGS.messages
ENVIRONMENT = SETTINGS.environment


# How docs/settings.md is made from this module.
REGENERATE_COMMAND = (
    "python -c 'import pipeline.settings as s; print(s.render_markdown(), end=\"\")' > docs/settings.md"
)


def _shown(value: Any) -> str:
    if isinstance(value, Path):
        return "the repository's root"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10_000:
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ", ".join(str(item) for item in value)
    return str(value)


def render_markdown(settings: Settings = SETTINGS) -> str:
    """docs/settings.md: a table per group of every setting's name, value, unit and why."""
    lines = [
        "# Settings",
        "",
        "Every limit, threshold, budget, timeout, size, path, S3 key prefix, metadata key and",
        "environment variable of the pipeline, with its unit and why it has its value. They live in",
        "`pipeline/settings.py`; this page is rendered from it (`render_markdown`) and",
        "`tests/test_settings.py` fails when the two differ. Regenerate it from the repository's root:",
        "",
        "```sh",
        REGENERATE_COMMAND,
        "```",
        "",
        "`check_budgets` asserts the budgets that depend on each other when the module is imported:",
        "",
    ]
    lines += [f"- {line.strip()[2:]}" if line.strip().startswith("- ") else f"  {line.strip()}"
              for line in _budget_lines()]
    for group in dataclasses.fields(settings):
        value = getattr(settings, group.name)
        lines += ["", f"## {group.name.upper()}", "", str(type(value).__doc__), "",
                  "| name | value | unit | why |", "| --- | --- | --- | --- |"]
        for item in dataclasses.fields(value):
            why = item.metadata["why"].replace("|", "\\|")
            lines.append(f"| `{item.name}` | `{_shown(getattr(value, item.name))}` | {item.metadata['unit']} | {why} |")
    return "\n".join(lines) + "\n"


def _budget_lines() -> List[str]:
    doc = str(check_budgets.__doc__)
    start, end = doc.index("- the S3"), doc.index("Raises:")
    return [line for line in doc[start:end].strip().splitlines()]
