"""The hot path: valid single predictions answered before FastAPI's per-request machinery, with
the bytes FastAPI's own route would send; everything else left to FastAPI.

Two parts, each a documented extension point:

- `HotPathRoute`, the app's route class (`app.router.route_class`), a FastAPI `APIRoute` that
  knows from its own declaration whether it can answer on the hot path, and how: its endpoint
  is an `async def` taking exactly one argument, the request body as a pydantic model (no
  default, no dependencies), and the route returns its `response_model` with FastAPI's defaults
  (status 200, the default response class, no include, exclude or exclude_* options). Then
  `answer` validates the raw body bytes with that model (pydantic, straight from JSON), awaits
  the endpoint and serialises its result as the stock handler does. Every other route is a
  plain `APIRoute`.
- `HotPathMiddleware`, a pure ASGI middleware placed inside the request limits and the metrics:
  for a request sent as exactly `Content-Type: application/json` that a hot-path route matches
  (the route's own `matches`, which also gives the scope its `route`, as the router does, so
  the metrics label the request with the route's template), it reads the body and lets the
  route answer. A body the route's model refuses, any other content type, route or method goes
  on to the app untouched, the body it read replayed, so that each error is FastAPI's own 422
  or 400.

Why a middleware and not the route's handler alone: the hot path's answer is the same either
way, but from inside the route a request still pays FastAPI's exception and exit-stack
middleware, its router and its request object, and the service then fell below the speed it
keeps against FastAPI answering a constant (docs/benchmarks.md has both measurements).
"""
import inspect
from typing import Any, Awaitable, Callable, List, MutableMapping, Optional, Sequence, Tuple, Type

from fastapi.datastructures import DefaultPlaceholder
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.routing import Match

from pipeline.serve.limits import ASGIApp, Message, Receive, Scope, Send
from pipeline.settings import SERVE

JSON_CONTENT_TYPE = b"application/json"


class HotPathRoute(APIRoute):
    """An `APIRoute` that can answer a valid JSON body itself, with the stock handler's exact
    answer, when its declaration allows it (see the module's docstring); `on_hot_path` says
    whether it can. Reached through FastAPI's router, it is the stock route."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        body = self._body_parameter()
        self.on_hot_path = body is not None
        if body is not None:
            self._body_name, self._body_model = body
            self._response = TypeAdapter(self.response_model)

    async def answer(self, body: bytes) -> Optional[bytes]:
        """The response body for a request body, or None if the request model refuses it.

        Only for a route `on_hot_path`. As the stock handler does, the endpoint's result is
        checked against the response model (an instance of it passes unchanged), then
        serialised straight to JSON bytes. A body over SERVE.hot_path_max_body_bytes is left
        to the stock route unparsed, so that it is parsed once.
        """
        if len(body) > SERVE.hot_path_max_body_bytes:
            return None
        try:
            value = self._body_model.model_validate_json(body)
        except ValidationError:
            return None
        result = await self.endpoint(**{self._body_name: value})
        return bytes(self._response.dump_json(self._response.validate_python(result)))

    def _body_parameter(self) -> Optional[Tuple[str, Type[BaseModel]]]:
        """The endpoint's one argument and its model, if the route can answer on the hot path."""
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


class HotPathMiddleware:
    """Pure ASGI middleware: lets the app's hot-path routes answer their valid requests before
    FastAPI's per-request machinery (see the module's docstring).

    Args:
        app: the ASGI app to wrap.
        routes: the app's routes; those that are `HotPathRoute`s on the hot path answer here.
    """

    def __init__(self, app: ASGIApp, routes: Sequence[Any]) -> None:
        self.app = app
        self.routes = [route for route in routes if isinstance(route, HotPathRoute) and route.on_hot_path]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _content_type(scope) == JSON_CONTENT_TYPE:
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match == Match.FULL:
                    await self._answer(route, child_scope, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _answer(self, route: HotPathRoute, child_scope: MutableMapping[str, Any], scope: Scope, receive: Receive,
                      send: Send) -> None:
        messages: List[Message] = []
        chunks: List[bytes] = []
        complete = False
        while not complete:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # the client went away: the app sees that as it would have
            chunks.append(message.get("body", b""))
            complete = not message.get("more_body", False)
        if complete:
            content = await route.answer(b"".join(chunks))
            if content is not None:
                scope.update(child_scope)
                await send({"type": "http.response.start", "status": 200, "headers": [
                    (b"content-length", str(len(content)).encode("latin-1")),
                    (b"content-type", JSON_CONTENT_TYPE),
                ]})
                await send({"type": "http.response.body", "body": content})
                return
        await self.app(scope, _replaying(messages, receive), send)


def _content_type(scope: Scope) -> Optional[bytes]:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bytes(value)
    return None


def _replaying(messages: List[Message], receive: Receive) -> Callable[[], Awaitable[Message]]:
    """A `receive` that hands out `messages` first, then whatever `receive` gives."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
