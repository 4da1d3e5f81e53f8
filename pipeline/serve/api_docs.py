"""The API's documentation page, Swagger UI at /docs, with every script, stylesheet and icon it
loads served by the service itself; FastAPI's second page, ReDoc at /redoc, is off.

FastAPI's stock pages load Swagger UI's and ReDoc's scripts and stylesheet from a public CDN and
their icon from FastAPI's web site: in a cluster without internet access /docs was a blank page.
Here the page is built as FastAPI documents it ("Custom Docs UI Static Assets (Self-Hosting)"):
the stock pages turned off (`docs_url=None`, `redoc_url=None`), the same page made by FastAPI's
own `get_swagger_ui_html`, pointed at the service's own copies, which a `StaticFiles` mount
serves under API.docs_assets_path.

The copies are the files the pinned package `fastapi-offline` ships in its `static` folder
(requirements_pipe.txt, so the stages' runtime image has them): Swagger UI 5's bundle and
stylesheet and FastAPI's icon, the major version of FastAPI's CDN URLs. The package's own
`FastAPIOffline` factory is not used (the service keeps its own app factory).

Swagger UI's validator badge would send the schema's URL to an external validator from any
host but localhost: it is turned off (`validatorUrl: null`). ReDoc is off because its bundle
always shows an attribution whose logo it loads from its vendor's CDN, whatever its options.
docs/api.md documents the page.
"""
from importlib.resources import files
from pathlib import Path
from typing import Any, Dict, Tuple

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from pipeline.settings import API

ASSETS_PACKAGE = "fastapi_offline"
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
FAVICON = "favicon.png"
# Every file the page references, and so every file the service must be able to serve.
ASSETS: Tuple[str, ...] = (SWAGGER_JS, SWAGGER_CSS, FAVICON)
# Over FastAPI's defaults (and the app's own `swagger_ui_parameters`): no validator badge.
SWAGGER_UI_PARAMETERS: Dict[str, Any] = {"validatorUrl": None}


def assets_directory() -> Path:
    """The folder of the installed assets package that holds the page's files.

    Raises:
        FileNotFoundError: if the package is installed without one of `ASSETS`.
    """
    directory = Path(str(files(ASSETS_PACKAGE).joinpath("static")))
    missing = [name for name in ASSETS if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{ASSETS_PACKAGE} has no {', '.join(missing)} in {directory}")
    return directory


def add_docs(app: FastAPI) -> None:
    """Serve Swagger UI and its assets from `app`, which was made with `docs_url=None` and
    `redoc_url=None` (FastAPI's stock pages, which use the CDN, off).

    Adds GET API.docs_path (Swagger UI), its OAuth2 redirect page as FastAPI has it, and the
    assets under API.docs_assets_path. Every URL in the page starts with the request's root
    path, as in FastAPI's stock page, so the page works behind a path prefix.
    """
    assert app.docs_url is None and app.redoc_url is None, "the stock pages must be off (they use the CDN)"
    openapi_url = str(app.openapi_url)
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url
    parameters = {**(app.swagger_ui_parameters or {}), **SWAGGER_UI_PARAMETERS}
    app.mount(API.docs_assets_path, StaticFiles(directory=assets_directory()), name="docs-assets")

    @app.get(API.docs_path, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{API.docs_assets_path}/{SWAGGER_JS}",
            swagger_css_url=f"{root}{API.docs_assets_path}/{SWAGGER_CSS}",
            swagger_favicon_url=f"{root}{API.docs_assets_path}/{FAVICON}",
            oauth2_redirect_url=root + oauth2_redirect_url if oauth2_redirect_url else None,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=parameters,
        )

    if oauth2_redirect_url:
        @app.get(oauth2_redirect_url, include_in_schema=False)
        async def swagger_ui_redirect() -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()
