"""Whether tracking is on, the MLflow client with its timeouts, and one bounded call to it.

MLflow is imported only here, and only inside `mlflow_client`: nothing is imported or
contacted unless MLFLOW_TRACKING_URI is set, and the serve stage never imports it. Every call
to the tracking server goes through `within_budget`, which turns any failure, and a server
that does not answer in time, into one `TrackingError`.
"""
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pipeline.artefact.model import MODEL_NAME
from pipeline.settings import ENVIRONMENT, TRACKING, environment_value
from pipeline.utils import quote

T = TypeVar("T")


class TrackingError(RuntimeError):
    """The tracking server failed, refused or did not answer in time; what was not recorded is said."""


@dataclass(frozen=True)
class TrackingConfig:
    """Where runs and model versions go."""

    uri: str
    experiment: str
    model_name: str

    @property
    def server(self) -> str:
        """The server as a log line names it: the URI without any user or password in it."""
        parts = urlsplit(self.uri)
        if "@" not in parts.netloc:
            return self.uri
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def tracking_config(bucket: str) -> Optional[TrackingConfig]:
    """The tracking set-up from the environment, or None when MLFLOW_TRACKING_URI is unset (off).

    The experiment is MLFLOW_EXPERIMENT_NAME or the bucket's name; the registered model
    MLFLOW_REGISTERED_MODEL_NAME or the artefacts' name.
    """
    uri = environment_value(ENVIRONMENT.mlflow_tracking_uri)
    if not uri:
        return None
    return TrackingConfig(
        uri,
        environment_value(ENVIRONMENT.mlflow_experiment_name) or bucket,
        environment_value(ENVIRONMENT.mlflow_registered_model_name) or MODEL_NAME,
    )


def mlflow_client(config: TrackingConfig) -> Any:
    """An `mlflow.MlflowClient` for the tracking server and its model registry.

    The client's timeout, retries and backoff come from TRACKING (unless already set in the
    environment), so a server that is down costs seconds; it prints no URL and installs no log
    handler, so the stage's lines keep the log format.
    """
    numbers = (TRACKING.http_timeout_seconds, TRACKING.http_max_retries, TRACKING.http_backoff_factor)
    for name, number in zip(ENVIRONMENT.mlflow_client_variables, numbers):
        os.environ.setdefault(name, str(number))
    for name, flag in zip(ENVIRONMENT.mlflow_quiet_variables, ("true", "false")):
        os.environ.setdefault(name, flag)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=config.uri, registry_uri=config.uri)


def within_budget(work: Callable[[], T], seconds: float, what: str, config: TrackingConfig) -> T:
    """`work()`'s result, or a TrackingError if it raised or had not ended after `seconds`.

    The work runs in a daemon thread: one that hangs is left behind (the process does not wait
    for it), so the caller is never held longer than `seconds`.

    Raises:
        TrackingError: naming the server, what was not recorded (`what`) and why.
    """
    outcome: List[Any] = []
    failure: List[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as error:  # any failure of the client is reported, never raised in the thread
            failure.append(error)

    thread = threading.Thread(target=run, name="experiment-tracking", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TrackingError(f"the tracking server {config.server} did not answer within {seconds:g} s; "
                            f"not recorded: {what}")
    if failure:
        raise TrackingError(f"the tracking server {config.server} failed ({_reason(failure[0])}); "
                            f"not recorded: {what}") from failure[0]
    return outcome[0]


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {quote(text[0] if text else '')}"
