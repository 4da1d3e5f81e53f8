"""The service's HTTP connections: uvicorn's two protocols with the limits uvicorn keeps on
neither stack, or on one only.

uvicorn 0.54 bounds a request head only on h11 (`h11_max_incomplete_event_size`; httptools
ignores it), never bounds how long a head may take to arrive, and counts every open
connection against its concurrency limit, so that sockets that never finish their head shut
every other client out with 503s, and it logs a WARNING per refusal. Each protocol here is
uvicorn's own, for its stack, with:

- a head limit on both stacks: a head still incomplete after more than SERVE.max_header_bytes,
  or complete and larger, is answered 431 and the connection closed;
- a head timeout: a connection whose head has not fully arrived SERVE.head_timeout_seconds after
  its first byte (or after it opened) is answered 408 and closed, as a slow body is;
- the request limit on requests, not connections: beyond SERVE.max_concurrent_requests running
  at once a request is answered 503; open connections are bounded apart
  (SERVE.max_open_connections, beyond which a new one is closed at once);
- on httptools, a request with a body that asks to upgrade the connection (to HTTP/2, `h2c`)
  is answered 400 saying so: httptools hands the body to the other protocol, and the request
  would reach the app without it;
- refusals counted and logged at most once per SERVE.refusal_log_interval_seconds, the first at once;
  so are uvicorn's own per-request WARNINGs (an invalid request, an upgrade it does not support).

uvicorn reads its protocol's `app` once per request, when the request's head has been parsed,
on both stacks: that is where a head stops its timer and the request is admitted or refused.
"""
import asyncio
import json
import logging
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, Type

from pipeline.settings import SERVE

Scope = Dict[str, Any]
Message = Dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

log = logging.getLogger(__name__)

HTTP_REASONS = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large",
                503: "Service Unavailable"}


class RefusalLog:
    """Counts refusals by reason and logs them as one WARNING: the first at once, then at most
    once per `interval_seconds`, with the counts since the last line. A flood of refusals
    costs the log one line a minute, not one a refusal."""

    def __init__(self, interval_seconds: float = SERVE.refusal_log_interval_seconds,
                 clock: Callable[[], float] = time.monotonic, title: str = "connections refused") -> None:
        self.interval_seconds = interval_seconds
        self.clock = clock
        self.title = title
        self.counts: Dict[str, int] = {}
        self.last_logged: Optional[float] = None

    def note(self, reason: str) -> None:
        """Count one refusal; log the counts if the last line is old enough."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        now = self.clock()
        if self.last_logged is None or now - self.last_logged >= self.interval_seconds:
            summary = "; ".join(f"{count} {why}" for why, count in sorted(self.counts.items()))
            since = "" if self.last_logged is None else f" in the last {now - self.last_logged:.0f} s"
            log.warning(f"{self.title}{since}: {summary}")
            self.counts = {}
            self.last_logged = now


REFUSALS = RefusalLog()
# uvicorn's protocols log a WARNING of their own for each invalid request ("Invalid HTTP request
# received.", answered 400) and each upgrade they do not support (two lines on h11): a client
# sending those in a loop would grow the log by a line a request. They are counted here instead.
PROTOCOL_WARNINGS = RefusalLog(title="requests uvicorn warned of")


class CountedWarnings:
    """uvicorn's logger for one connection, whose WARNINGs (uvicorn's own constant messages, one
    per request) are counted in PROTOCOL_WARNINGS rather than logged one by one; everything
    else (errors from the app, trace lines) goes to uvicorn's logger unchanged."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def warning(self, message: object, *args: Any, **kwargs: Any) -> None:
        PROTOCOL_WARNINGS.note(str(message) % args if args else str(message))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)


def refusal(status: int, detail: str) -> ASGIApp:
    """An ASGI app that answers `status` with `{"detail": detail}` and closes the connection."""
    body = json.dumps({"detail": detail}).encode("utf-8")

    async def refuse(scope: Scope, receive: Callable[[], Awaitable[Message]],
                     send: Callable[[Message], Awaitable[None]]) -> None:
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"connection", b"close"),
        ]})
        await send({"type": "http.response.body", "body": body})

    return refuse


def raw_refusal(status: int, detail: str) -> bytes:
    """The bytes of the same answer, for a connection with no request to answer through."""
    body = json.dumps({"detail": detail}).encode("utf-8")
    return (f"HTTP/1.1 {status} {HTTP_REASONS[status]}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode("ascii") + body


HEAD_TOO_LARGE = f"the request head is larger than {SERVE.max_header_bytes} bytes, the limit"
HEAD_TOO_SLOW = f"the request head did not arrive within {SERVE.head_timeout_seconds:g} s"
BUSY = f"the service is answering {SERVE.max_concurrent_requests} requests, its limit; retry shortly"
UPGRADE_WITH_BODY = ("the request asks to upgrade the connection to another protocol, which this service "
                     "does not speak, and an upgrade would drop its body: send it as plain HTTP/1.1, "
                     "without the Upgrade header")


class ConnectionLimits:
    """The limits above, mixed into uvicorn's protocol for a stack (`protocol_class`).

    Attributes uvicorn's protocols have and this uses: `transport`, `connections`, `tasks`,
    `cycle`, `loop`.
    """

    transport: Any
    connections: Any
    tasks: Any
    cycle: Any
    loop: asyncio.AbstractEventLoop
    limit_concurrency: Optional[int]
    logger: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._awaiting_head = True
        self._head_bytes = 0
        self._head_timer: Optional[asyncio.TimerHandle] = None
        super().__init__(*args, **kwargs)
        # Requests are limited here, by their number, not by uvicorn, by connections.
        self.limit_concurrency = None
        self.logger = CountedWarnings(self.logger)

    @property
    def app(self) -> ASGIApp:
        """The app that answers the request whose head has just been parsed: the service's, or
        a refusal."""
        self._awaiting_head = False
        self._head_bytes = 0
        self._cancel_head_timer()
        if self._parsed_head_bytes() > SERVE.max_header_bytes:
            REFUSALS.note("heads over the head limit (431)")
            return refusal(431, HEAD_TOO_LARGE)
        if self._upgrade_drops_body():
            REFUSALS.note("upgrades with a body (400)")
            return refusal(400, UPGRADE_WITH_BODY)
        if len(self.tasks) >= SERVE.max_concurrent_requests:
            REFUSALS.note("requests over the request limit (503)")
            return refusal(503, BUSY)
        return self._app

    @app.setter
    def app(self, value: ASGIApp) -> None:
        self._app = value

    def _parsed_head_bytes(self) -> int:
        """The size of the head just parsed, where the parser does not bound it itself."""
        return 0

    def _upgrade_drops_body(self) -> bool:
        return False

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        if len(self.connections) > SERVE.max_open_connections:
            REFUSALS.note("connections over the open-connection limit (closed)")
            transport.close()
            return
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._awaiting_head:
            self._head_bytes += len(data)
            if self._head_timer is None:
                self._arm_head_timer()
        super().data_received(data)  # type: ignore[misc]
        if self._awaiting_head and self._head_bytes > SERVE.max_header_bytes and not self.transport.is_closing():
            REFUSALS.note("heads over the head limit (431)")
            self._refuse(431, HEAD_TOO_LARGE)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._awaiting_head = True
        self._head_bytes = 0

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(SERVE.head_timeout_seconds, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        in_progress = self.cycle is not None and not self.cycle.response_complete
        if self._awaiting_head and not in_progress and not self.transport.is_closing():
            REFUSALS.note("heads slower than the head timeout (408)")
            self._refuse(408, HEAD_TOO_SLOW)

    def _refuse(self, status: int, detail: str) -> None:
        self._awaiting_head = False
        self._cancel_head_timer()
        self.transport.write(raw_refusal(status, detail))
        self.transport.close()


def protocol_class(http: str) -> Type[Any]:
    """uvicorn's protocol for `http` ("httptools" or "h11") with the connection limits.

    Imported here, when the stack is chosen: httptools may be missing (the fallback).
    """
    if http == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        class LimitedHttpToolsProtocol(ConnectionLimits, HttpToolsProtocol):
            headers: List[Tuple[bytes, bytes]]
            parser: Any
            _head_bytes_parsed = 0

            def on_url(self, url: bytes) -> None:
                self._head_bytes_parsed += len(url)
                super().on_url(url)

            def on_message_begin(self) -> None:
                self._head_bytes_parsed = 0
                super().on_message_begin()

            def on_header(self, name: bytes, value: bytes) -> None:
                self._head_bytes_parsed += len(name) + len(value) + 4
                super().on_header(name, value)

            def _parsed_head_bytes(self) -> int:
                # A head that arrives in one read is parsed before data_received can count
                # it as incomplete: httptools has no limit of its own, so it is counted here.
                return self._head_bytes_parsed

            def _upgrade_drops_body(self) -> bool:
                if not self.parser.should_upgrade():
                    return False
                names = {name for name, _ in self.headers}
                if b"transfer-encoding" in names:
                    return True
                length = next((value for name, value in self.headers if name == b"content-length"), b"0")
                return length.strip() not in (b"", b"0")

        return LimitedHttpToolsProtocol
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class LimitedH11Protocol(ConnectionLimits, H11Protocol):
        pass

    return LimitedH11Protocol
