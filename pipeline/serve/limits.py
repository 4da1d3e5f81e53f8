"""Request limits of the service: how large a body may be, and how long it may take to arrive.

A pure ASGI middleware, so that it acts on the raw byte stream before anything is parsed:

- a request whose `Content-Length` is over SERVE.max_body_bytes is answered 413 at once, its body
  never read; a body sent without a length (chunked) is counted as it streams and answered
  413 as soon as it passes the limit, so no more than the limit is ever held;
- a body that has not fully arrived SERVE.body_timeout_seconds after the request started is answered
  408, and the connection closed: a client that stalls mid-body cannot hold a connection (or
  a shutdown) for longer than that.

The limit is sized from the largest valid request: a batch of SERVE.max_batch_size items, each with
the longest product code and the longest number JSON may spell, pretty-printed (see
docs/reliability.md for the arithmetic).
"""
import asyncio
import json
from typing import Any, Awaitable, Callable, Dict, Optional

from pipeline.settings import SERVE

Scope = Dict[str, Any]
Message = Dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Abort(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class RequestLimits:
    """ASGI middleware: 413 for bodies over `max_body_bytes`, 408 for bodies slower than
    `body_timeout_seconds`; everything else passes to `app` untouched."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int = SERVE.max_body_bytes,
        body_timeout_seconds: float = SERVE.body_timeout_seconds,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_seconds = body_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _respond(send, 413, self._too_large())
            return
        deadline = asyncio.get_running_loop().time() + self.body_timeout_seconds
        received = 0
        body_complete = False
        aborted: Optional[_Abort] = None
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, body_complete, aborted
            if body_complete:
                return await receive()
            try:
                # A timer on the current task, not a task per message (as wait_for makes): a
                # request costs a few microseconds more, not tens.
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                aborted = _Abort(408, f"the request body did not arrive within {self.body_timeout_seconds:g} s")
                raise aborted from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    aborted = _Abort(413, self._too_large())
                    raise aborted
                body_complete = not message.get("more_body", False)
            else:
                body_complete = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if aborted is not None:
                return  # the app's answer to the exception we raised; ours goes out instead
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if aborted is None:
                raise
        if aborted is not None and not response_started:
            await _respond(send, aborted.status, aborted.detail)

    def _too_large(self) -> str:
        return f"the request body is larger than {self.max_body_bytes} bytes, the limit"


def _content_length(scope: Scope) -> Optional[int]:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server refuses a malformed length before we see it
    return None


async def _respond(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode("utf-8")
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode("ascii")),
            # The rest of the body is never read, so the connection cannot be reused.
            (b"connection", b"close"),
        ],
    })
    await send({"type": "http.response.body", "body": body})
