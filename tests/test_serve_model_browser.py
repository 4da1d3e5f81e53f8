"""The service's pages in a real browser: the model's report and Swagger UI at /docs open in
headless Chromium (Debian's `chromium`, driven by Playwright) from the real
serve stage, started as a process against the local S3 server with a model and report the real
train stage made.

For each page: no request to any host but the service's (every request is recorded; one to any
other host is blocked and fails the test), no failed request, no answer of status 400 or more,
no console error (a Content-Security-Policy violation is one) and no uncaught script error. The
documentation page must also have rendered the API's operations: a blank page fails.

Chromium is a Debian package that `.ci/browser --install` installs (the `tests` environment's
first step, as root); where it is missing these tests fail under CI (`CI=true`) and are skipped,
saying why, elsewhere (docs/testing.md).
"""
import os
import shutil
import subprocess
import sys
from typing import Any, Dict, Iterator, List, NamedTuple
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import BrowserContext, ConsoleMessage, Page, Request, Response, Route, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from pipeline.local.local_s3 import LocalS3, create_bucket
from pipeline.local.synthetic import generate_orders, generate_weeks
from pipeline.settings import API, ENVIRONMENT, LOCAL
from pipeline.storage.client import s3_client
from pipeline.storage.datasets import put_dataset
from tests.helpers import (
    START_TIMEOUT, TEST_WEEK_SEED, Service, start_service, stop_service, wait_until_listening,
)

pytestmark = pytest.mark.e2e

BROWSER = "chromium"
LOOPBACK_HOSTS = {LOCAL.loopback_host, "localhost"}
# Headless, as root (no sandbox), and quiet: without the background-networking, component-update
# and sync switches Chromium reaches out to external hosts by itself. The resolver rule is a
# second guard for what the browser itself might send outside any page: every host but
# loopback fails to resolve.
BROWSER_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]
PAGE_TIMEOUT_MS = 60_000
# What shows that Swagger UI rendered the schema: one element per operation.
OPERATIONS_SELECTOR = "#swagger-ui .opblock"


class PageVisit(NamedTuple):
    """What the browser did while it opened a page."""

    requests: List[str]
    blocked: List[str]
    failed: List[str]
    error_statuses: List[str]
    console_errors: List[str]
    page_errors: List[str]


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which(BROWSER)
    if path is None:
        message = (f"Debian's {BROWSER} package is not installed: run `.ci/browser --install` as root (the tests "
                   "environment's first step does)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def service(local_s3: LocalS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The serve stage as a process, serving the model (and its report) that the train stage's
    CLI made from a week of orders in a bucket of its own."""
    env = dict(os.environ)
    local_s3.point_environment_here(env)
    env[ENVIRONMENT.python_path] = str(LOCAL.repo_root)
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        client = s3_client()
        bucket = create_bucket(client)
        put_dataset(bucket, generate_orders(1000, seed=TEST_WEEK_SEED), generate_weeks(1, seed=100)[0].timestamp,
                    client)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    trained = subprocess.run([sys.executable, "-m", "pipeline.train_model", bucket, "0.9", "0.8"], env=env,
                             cwd=LOCAL.repo_root, capture_output=True, text=True, timeout=START_TIMEOUT * 5)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    running = start_service(["-m", "pipeline.serve_model", bucket], env, tmp_path_factory.mktemp("browser"))
    try:
        wait_until_listening(running)
        yield running
    finally:
        stop_service(running)


@pytest.fixture(scope="module")
def browser(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """Headless Chromium with a fresh profile, every request of its pages going through `visit`."""
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=chromium, headless=True,
            args=BROWSER_FLAGS, timeout=PAGE_TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


def visit(browser: BrowserContext, url: str, ready_selector: str = "body") -> "tuple[PageVisit, Page]":
    """Open `url` in a new tab, wait until the network is idle and `ready_selector` is there."""
    seen = PageVisit([], [], [], [], [], [])

    def route(route: Route) -> None:
        host = urlsplit(route.request.url).hostname
        if host in LOOPBACK_HOSTS:
            route.continue_()
        else:
            seen.blocked.append(route.request.url)
            route.abort("blockedbyclient")

    def failed(request: Request) -> None:
        if request.url not in seen.blocked:
            seen.failed.append(f"{request.url}: {request.failure}")

    def response(answer: Response) -> None:
        if answer.status >= 400:
            seen.error_statuses.append(f"{answer.status} {answer.url}")

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            seen.console_errors.append(f"{message.text} ({message.location})")

    page = browser.new_page()
    page.route("**/*", route)
    page.on("request", lambda request: seen.requests.append(request.url))
    page.on("requestfailed", failed)
    page.on("response", response)
    page.on("console", console)
    page.on("pageerror", lambda error: seen.page_errors.append(str(error)))
    page.goto(url, wait_until="networkidle", timeout=PAGE_TIMEOUT_MS)
    try:
        page.wait_for_selector(ready_selector, state="attached", timeout=PAGE_TIMEOUT_MS)
    except PlaywrightTimeoutError:
        pytest.fail(f"{url}: {ready_selector!r} never appeared (a blank page?); the browser saw {seen}")
    page.wait_for_load_state("networkidle", timeout=PAGE_TIMEOUT_MS)
    return seen, page


def assert_clean(seen: PageVisit) -> None:
    problems: Dict[str, Any] = {name: value for name, value in seen._asdict().items() if name != "requests" and value}
    assert problems == {}, f"requests: {seen.requests}"
    assert seen.requests, "the page made no request at all"
    assert all(urlsplit(url).hostname in LOOPBACK_HOSTS for url in seen.requests), seen.requests


def test_the_model_report_renders_with_no_error_and_nothing_from_elsewhere(
    browser: BrowserContext, service: Service
) -> None:
    seen, page = visit(browser, service.url + API.model_report_path, "img")

    assert_clean(seen)
    # The plots are embedded (data: URLs, which the report's policy allows) and were drawn.
    images = page.locator("img")
    assert images.count() >= 2
    for index in range(images.count()):
        assert images.nth(index).evaluate("img => img.complete && img.naturalWidth > 0"), index
    page.close()


def test_the_api_docs_render_every_operation_from_the_service_alone(browser: BrowserContext, service: Service) -> None:
    seen, page = visit(browser, service.url + API.docs_path, OPERATIONS_SELECTOR)

    assert_clean(seen)
    operations = page.locator(OPERATIONS_SELECTOR).count()
    schema = page.request.get(service.url + "/openapi.json").json()
    assert operations == sum(len(methods) for methods in schema["paths"].values())
    assert page.locator("body").inner_text().count(API.predict_path) >= 1
    page.close()


def test_a_request_to_another_host_is_caught(browser: BrowserContext, service: Service) -> None:
    # The check itself can fail: a page of the service's own origin that loads a script from
    # elsewhere is blocked and reported.
    seen, page = visit(browser, service.url + API.health_path)
    page.set_content('<script src="https://cdn.example.invalid/x.js"></script>')
    page.wait_for_load_state("networkidle", timeout=PAGE_TIMEOUT_MS)

    assert seen.blocked == ["https://cdn.example.invalid/x.js"]
    page.close()
