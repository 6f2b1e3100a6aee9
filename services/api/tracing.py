"""Request ids: one per request, from the caller or made here, bound to every log line (DESIGN §6, §9)."""

from __future__ import annotations

import re
import time
import uuid
from contextlib import nullcontext
from typing import Any
from urllib.parse import parse_qsl, urlencode

import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import ReadableSpan

from shared.logging import get_logger

REQUEST_ID_HEADER = "x-request-id"
# Not an OpenTelemetry convention (there is none for a request id); namespaced as the conventions ask.
REQUEST_ID_ATTRIBUTE = "signup.request_id"
# Probes and scrapes: no one follows them, and /readyz's SQL would otherwise start a trace per probe.
UNTRACED_PATHS = ("/healthz", "/readyz")
# Accept a caller's id only if it is short and plain: it lands in logs, headers and the database.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# W3C traceparent: version-traceid-parentid-flags; the 32-hex trace id is the part we keep.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")

# The span attributes that hold the request's URL or query string, in either semantic-conventions mode.
_URL_ATTRIBUTES = ("http.url", "url.full", "http.target")
_QUERY_ATTRIBUTE = "url.query"
REDACTED = "REDACTED"

log = get_logger()


def redact_query_string(span: trace.Span, scope: dict[str, Any]) -> None:
    """The server span's URL with every query value replaced by ``REDACTED`` (the names stay).

    The ASGI instrumentation's documented ``server_request_hook``, given to Litestar's OpenTelemetry plugin:
    the verification link carries its code in the query string, and the instrumentation records the whole
    URL (it redacts only a few cloud providers' signature parameters).
    """
    raw = scope.get("query_string") or b""
    if not raw or not span.is_recording() or not isinstance(span, ReadableSpan):
        return
    names = [name for name, _ in parse_qsl(raw.decode("latin-1"), keep_blank_values=True)]
    query = urlencode([(name, REDACTED) for name in names]) or REDACTED
    recorded = span.attributes or {}
    for name in _URL_ATTRIBUTES:
        value = recorded.get(name)
        if isinstance(value, str) and "?" in value:
            span.set_attribute(name, f"{value.split('?', 1)[0]}?{query}")
    if _QUERY_ATTRIBUTE in recorded:
        span.set_attribute(_QUERY_ATTRIBUTE, query)


def request_id_from_headers(headers: dict[str, str]) -> str:
    """``X-Request-ID`` if it is safe, else the ``traceparent`` trace id, else a new random id."""
    request_id = headers.get(REQUEST_ID_HEADER, "")
    if _SAFE_ID.match(request_id):
        return request_id
    if match := _TRACEPARENT.match(headers.get("traceparent", "").strip().lower()):
        return match.group(1)
    return uuid.uuid4().hex


def tracing_middleware(app: ASGIApp) -> ASGIApp:
    """Bind ``request_id`` for the request, echo it in ``X-Request-ID`` and log one line per request.

    The line has the path but not the query string: the verification link carries its secret there.
    """

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        request_id = request_id_from_headers(headers)
        scope.setdefault("state", {})["request_id"] = request_id
        # The server span of Litestar's OpenTelemetry middleware, when it runs (a no-op span otherwise).
        trace.get_current_span().set_attribute(REQUEST_ID_ATTRIBUTE, request_id)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        untraced = scope["path"] in UNTRACED_PATHS
        try:
            with suppress_instrumentation() if untraced else nullcontext():
                await app(scope, receive, send_with_id)
        finally:
            log.info(
                "request",
                method=scope.get("method"),
                path=scope["path"],
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            structlog.contextvars.clear_contextvars()

    return middleware
