"""The documentation page (`pipeline/serve/api_docs.py`): /docs references nothing but the
service itself, and the service serves every file it references, with its type; /redoc is off.

tests/test_serve_model_browser.py opens the same page in a real browser."""
import re
from html.parser import HTMLParser
from typing import List
from urllib.parse import urlsplit

from fastapi.testclient import TestClient

from pipeline.artefact.model import Model
from pipeline.serve import api_docs
from pipeline.serve.api import REPORT_HEADERS, create_app
from pipeline.serve.hot_path import HotPathMiddleware
from pipeline.settings import API

# What the browser is told each kind of file is.
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


class References(HTMLParser):
    """Every URL an HTML page makes the browser load: `src` and `href` attributes, and the
    `url:` its script points Swagger UI at."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: List[str] = []
        self.scripts: List[str] = []

    def handle_starttag(self, tag: str, attrs: List[tuple]) -> None:
        self.urls.extend(value for name, value in attrs if name in ("src", "href") and value)

    def handle_data(self, data: str) -> None:
        self.scripts.append(data)


def references(html: str) -> List[str]:
    parser = References()
    parser.feed(html)
    script_urls = re.findall(r"\burl:\s*'([^']*)'", "".join(parser.scripts))
    return parser.urls + script_urls


def test_the_docs_page_references_no_other_host(client: TestClient) -> None:
    page = API.docs_path
    response = client.get(page)

    assert response.status_code == 200
    urls = references(response.text)
    assert urls, f"{page} references nothing: the parser missed its assets"
    for url in urls:
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc) == ("", "") and url.startswith("/"), f"{page} loads {url}"
    # Nor anywhere else in the page (a font, a validator): no absolute URL at all.
    assert not re.search(r"(https?:)?//[\w.-]", response.text), response.text


def test_every_file_the_docs_page_references_is_served_with_its_type(client: TestClient) -> None:
    urls = [url for url in references(client.get(API.docs_path).text) if url.startswith(API.docs_assets_path)]

    assert urls
    for url in urls:
        response = client.get(url)
        suffix = url[url.rindex("."):]
        assert response.status_code == 200, url
        assert response.headers["content-type"].split(";")[0] == CONTENT_TYPES[suffix], url
        assert len(response.content) == int(response.headers["content-length"]) > 0


def test_the_page_references_every_asset_and_the_schema(client: TestClient) -> None:
    referenced = set(references(client.get(API.docs_path).text))

    assert referenced == {f"{API.docs_assets_path}/{name}" for name in api_docs.ASSETS} | {"/openapi.json"}
    assert client.get("/openapi.json").status_code == 200


def test_swagger_ui_has_no_validator_badge(client: TestClient) -> None:
    # Swagger UI would otherwise ask an external validator about the schema on any non-local host.
    assert '"validatorUrl": null' in client.get(API.docs_path).text


def test_the_page_follows_the_root_path_behind_a_prefix(served_model: Model) -> None:
    client = TestClient(create_app(served_model), root_path="/serve")

    for url in references(client.get(API.docs_path).text):
        assert url.startswith("/serve/"), url
    assert client.get(f"/serve{API.docs_assets_path}/{api_docs.SWAGGER_CSS}").status_code == 200


def test_swagger_uis_oauth2_redirect_page_is_kept_and_self_contained(client: TestClient) -> None:
    response = client.get(str(client.app.swagger_ui_oauth2_redirect_url))  # type: ignore[attr-defined]

    assert response.status_code == 200
    assert references(response.text) == []


def test_redoc_is_off(client: TestClient) -> None:
    # Its bundle always loads its vendor's logo from a CDN (api_docs.py).
    assert client.get("/redoc").status_code == 404


def test_unknown_files_and_paths_out_of_the_assets_folder_are_404s(client: TestClient) -> None:
    for path in (f"{API.docs_assets_path}/nothing.js", f"{API.docs_assets_path}/../core.py",
                 f"{API.docs_assets_path}/%2e%2e/core.py", f"{API.docs_assets_path}/"):
        assert client.get(path).status_code == 404, path


def test_the_reports_content_security_policy_stays_on_the_report(client: TestClient) -> None:
    # Swagger UI and ReDoc run scripts, which the report's policy forbids.
    for path in (API.docs_path, f"{API.docs_assets_path}/{api_docs.SWAGGER_JS}"):
        response = client.get(path)
        assert not {name.lower() for name in REPORT_HEADERS} & set(response.headers), path


def test_the_docs_routes_are_not_on_the_hot_path(served_model: Model) -> None:
    app = create_app(served_model)

    hot = HotPathMiddleware(app, app.router.routes).routes

    assert [route.path for route in hot] == [API.predict_path]


def test_the_assets_come_from_the_installed_package() -> None:
    directory = api_docs.assets_directory()

    assert directory.parent.name == api_docs.ASSETS_PACKAGE
    assert all((directory / name).stat().st_size > 0 for name in api_docs.ASSETS)
