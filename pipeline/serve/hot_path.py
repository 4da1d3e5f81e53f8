"""The hot path: a route class whose handler answers a valid JSON body without FastAPI's
per-request machinery, and leaves everything else to the stock handler.

FastAPI's documented way to customise how a route handles its requests is a subclass of
`APIRoute` whose `get_route_handler` returns the handler (`app.router.route_class`). The router
still matches the request and puts the route in the scope (`scope["route"]`, which the metrics
label requests with), and every middleware (request limits, metrics, access log) sees the
request as it sees any other. Only the handler differs: for a body sent as exactly
`Content-Type: application/json` that the route's request model accepts, it validates the raw
bytes with that model (pydantic, straight from JSON), awaits the endpoint and sends the status,
headers and bytes the stock handler would send, skipping the dependency solving, the JSON
parse into Python objects and the response checks, which cost more CPU than the estimate
(docs/benchmarks.md). Any other content type, and every body the model refuses or that cannot
be read, goes to the stock handler, so that each error is FastAPI's own 422 or 400.

A route answers on the hot path only if its endpoint is an `async def` taking exactly one
argument, the request body as a pydantic model (no default, no other dependencies), and it
returns the route's `response_model` with FastAPI's defaults (status 200, the default response
class, no include, exclude or exclude_* options). Any other route keeps the stock handler whole.
"""
import inspect
from typing import Any, Callable, Coroutine, Optional, Tuple, Type

from fastapi import Request, Response
from fastapi.datastructures import DefaultPlaceholder
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter, ValidationError

Handler = Callable[[Request], Coroutine[Any, Any, Response]]

JSON_CONTENT_TYPE = b"application/json"


class HotPathRoute(APIRoute):
    """An `APIRoute` that answers valid JSON bodies itself, with the stock handler's exact
    answer, when its endpoint allows it (see the module's docstring); `on_hot_path` says
    whether it does."""

    on_hot_path: bool = False

    def get_route_handler(self) -> Handler:
        stock = super().get_route_handler()
        body = self._body_parameter()
        if body is None:
            return stock
        name, body_model = body
        endpoint = self.endpoint
        response = TypeAdapter(self.response_model)
        self.on_hot_path = True

        async def handler(request: Request) -> Response:
            if _content_type(request) != JSON_CONTENT_TYPE:
                return await stock(request)
            try:
                value = body_model.model_validate_json(await request.body())
            except ValidationError:
                return await stock(request)  # FastAPI's own 422 (or 400)
            except Exception:
                # A body that cannot be read (the client left, a request limit): the stock
                # handler meets the same failure, and answers it as it does.
                return await stock(request)
            result = await endpoint(**{name: value})
            if isinstance(result, Response):
                return result
            # As the stock handler does: check the result against the response model (an
            # instance of it passes unchanged), then serialise it straight to JSON bytes.
            return Response(response.dump_json(response.validate_python(result)), media_type="application/json")

        return handler

    def _body_parameter(self) -> Optional[Tuple[str, Type[BaseModel]]]:
        """The endpoint's one argument and its model, if the hot path can answer for it."""
        if not inspect.iscoroutinefunction(self.endpoint) or self.dependencies:
            return None
        if not (isinstance(self.response_model, type) and issubclass(self.response_model, BaseModel)):
            return None
        if self.status_code is not None or not isinstance(self.response_class, DefaultPlaceholder):
            return None
        if (self.response_model_include is not None or self.response_model_exclude is not None
                or self.response_model_exclude_unset or self.response_model_exclude_defaults
                or self.response_model_exclude_none or not self.response_model_by_alias):
            return None
        parameters = list(inspect.signature(self.endpoint).parameters.values())
        if len(parameters) != 1 or parameters[0].default is not inspect.Parameter.empty:
            return None
        annotation = parameters[0].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        return parameters[0].name, annotation


def _content_type(request: Request) -> Optional[bytes]:
    # The raw header, as the client sent it: cheaper than parsing `request.headers`.
    for name, value in request.scope["headers"]:
        if name == b"content-type":
            return bytes(value)
    return None
