"""Slow clients cannot hold the API: deadlines on each request's head and body, and a cap on connections.

uvicorn bounds neither: its keep-alive timeout runs only between requests and stops at the first byte, so a
connection that sends one header byte every few seconds is held for ever, and nothing bounds the number of
such connections short of the file-descriptor limit. Its ``limit_concurrency`` decides only once a request's
head is in (a trickling head is never refused) and counts open connections, so idle ones would make it
refuse ``/healthz``. Two small pieces close the gap, through public extension points (DESIGN §8):

- ``guarded_protocol`` wraps uvicorn's HTTP protocol (``uvicorn.run(http=...)`` takes an asyncio protocol
  class): a connection accepted beyond ``API_MAX_CONNECTIONS`` gets a pre-built ``503`` and is closed before
  anything of it is read; every other one must deliver its request's head within ``API_HEADER_TIMEOUT_MS`` of
  connecting, or of its previous answer, or it is closed.
- ``read_deadline``, the outermost ASGI middleware, is called when a head is in: it stops that connection's
  head deadline, gives the body ``API_BODY_TIMEOUT_MS`` (then ``BodyTimeout``: ``408`` and the connection
  closed), and starts the head deadline again once the answer is sent.

The protocol reaches the middleware through the ASGI scope's ``state``: uvicorn copies the ``app_state`` a
protocol was built with into each request's scope, and the wrapper builds its inner protocol with one that
holds the connection's ``HeadDeadline``. Under another server (the tests' in-process uvicorn) there is none:
the body deadline still holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send
from prometheus_client import Counter, Gauge

CONNECTION_STATE = "connection_head_deadline"
"""Where a request's scope ``state`` holds its connection's ``HeadDeadline``."""

CLOSED = Counter(
    "signup_api_connections_closed_total",
    "Connections the API closed on a slow or surplus client",
    ["reason"],  # header_timeout | body_timeout | over_capacity
)
OPEN = Gauge("signup_api_open_connections", "Client connections open now")

_FULL_BODY = b'{"error":"too many connections, retry later"}'
_FULL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nretry-after: 1\r\nconnection: close\r\n\r\n%s" % (len(_FULL_BODY), _FULL_BODY)
)


class BodyTimeout(Exception):
    """The request's body did not arrive within ``API_BODY_TIMEOUT_MS``: ``408``, connection closed."""


class HeadDeadline:
    """One connection's deadline for its next request's head: closes the transport when it passes."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """(Re)start the deadline: from now, the next head must be in within ``timeout_s``."""
        self.stop()
        if self.transport is not None and not self.transport.is_closing():
            self._timer = asyncio.get_running_loop().call_later(self.timeout_s, self._expire)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self.transport is not None and not self.transport.is_closing():
            CLOSED.labels(reason="header_timeout").inc()
            self.transport.close()


def guarded_protocol(
    inner: Callable[..., asyncio.Protocol], *, header_timeout_s: float, max_connections: int
) -> type[asyncio.Protocol]:
    """An asyncio protocol class for ``uvicorn.run(http=...)`` that wraps ``inner`` (uvicorn's own protocol
    class, built with the same arguments) with a head deadline and the connection cap (module doc)."""
    open_connections = 0

    class GuardedProtocol(asyncio.Protocol):
        def __init__(self, *, app_state: dict[str, Any], **kwargs: Any) -> None:
            self.deadline = HeadDeadline(header_timeout_s)
            self.admitted = False
            self.inner = inner(app_state={**app_state, CONNECTION_STATE: self.deadline}, **kwargs)

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            nonlocal open_connections
            if open_connections >= max_connections:
                # Before a byte is read: the cheapest answer there is, and the client learns why.
                CLOSED.labels(reason="over_capacity").inc()
                cast(asyncio.Transport, transport).write(_FULL)  # a stream server's (uvloop's is no subclass)
                transport.close()
                return
            self.admitted = True
            open_connections += 1
            OPEN.inc()
            self.deadline.transport = transport
            self.deadline.start()
            self.inner.connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            nonlocal open_connections
            if not self.admitted:
                return
            self.admitted = False
            open_connections -= 1
            OPEN.dec()
            self.deadline.stop()
            self.deadline.transport = None
            self.inner.connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.admitted:
                self.inner.data_received(data)

        def eof_received(self) -> bool | None:
            return self.inner.eof_received() if self.admitted else None

        def pause_writing(self) -> None:
            self.inner.pause_writing()

        def resume_writing(self) -> None:
            self.inner.resume_writing()

    return GuardedProtocol


def read_deadline(body_timeout_s: float) -> Callable[[ASGIApp], ASGIApp]:
    """The ASGI middleware factory (module doc): the head is in, the body has ``body_timeout_s``."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def guard(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            head = scope.get("state", {}).get(CONNECTION_STATE)
            if head is not None:
                head.stop()
            deadline = asyncio.get_running_loop().time() + body_timeout_s
            body_in = False

            async def receive_in_time() -> ReceiveMessage:
                nonlocal body_in
                if body_in:  # from here on receive() only waits for the client to leave: no deadline
                    return await receive()
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    CLOSED.labels(reason="body_timeout").inc()
                    raise BodyTimeout from None
                body_in = message["type"] != "http.request" or not message.get("more_body", False)
                return message

            async def send_then_rearm(message: Message) -> None:
                await send(message)
                done = message["type"] == "http.response.body" and not message.get("more_body", False)
                if head is not None and done:
                    head.start()  # the answer is out: the next head's deadline runs

            await app(scope, receive_in_time, send_then_rearm)

        return guard

    return middleware
