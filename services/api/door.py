"""The signup door: refuse a signup the wait queue cannot take before any work is done for it.

The outermost ASGI middleware. For ``POST /v1/create_user`` it takes a place in the wait queue
(``Admission.enter``) before the request goes further: a signup the queue cannot take gets a ``503`` with
``Retry-After`` (and ``X-Request-ID``) from a pre-built body, its body unread, with no request log line, no
tracing and no Litestar exception machinery (in a flood, that work done for every refused request took CPU
from the hashes). The refusal is counted and logged, rate-limited, by ``admission``.

A retry that carries an ``Idempotency-Key`` whose answer is stored is let through even when the queue is
full, so that a client that retries a signup that did commit gets its ``200``, not a ``503``: one look-up by
the key's hash in PostgreSQL, done only for a request with the header that would otherwise be refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import timedelta

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.api.admission import PLACE_STATE, Admission
from services.api.idempotency import has_answer
from services.api.schemas import ErrorBody
from services.api.tracing import REQUEST_ID_HEADER, request_id_from_headers

SIGNUP_PATH = "/v1/create_user"
SHED_MESSAGE = "too many signups at once, retry later"
_IDEMPOTENCY_HEADER = b"idempotency-key"
_SHED_BODY = msgspec.json.encode(ErrorBody(error=SHED_MESSAGE))
_SHED_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_SHED_BODY)).encode())]


def signup_door(
    admission: Admission, sessions: async_sessionmaker[AsyncSession], *, idempotency_ttl: timedelta
) -> Callable[[ASGIApp], ASGIApp]:
    """The middleware factory (Litestar's ``middleware=[...]`` takes it) for ``admission``."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def door(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP or scope["path"] != SIGNUP_PATH or scope["method"] != "POST":
                await app(scope, receive, send)
                return
            place = admission.try_enter()
            if place is None:
                if await _stored_answer(scope, sessions, idempotency_ttl):
                    await app(scope, receive, send)  # a replay: it needs no place (or takes one later)
                else:
                    await _refuse(scope, send, admission.refuse("queue_full").retry_after_s)
                return
            scope.setdefault("state", {})[PLACE_STATE] = place
            try:
                await app(scope, receive, send)
            finally:
                place.leave()

        return door

    return middleware


async def _refuse(scope: Scope, send: Send, retry_after_s: int) -> None:
    # Like every answer, it carries the request id (the caller's, or a new one) for a support question.
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
    request_id = request_id_from_headers(headers).encode()
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": 503,
        "headers": [
            *_SHED_HEADERS,
            (b"retry-after", str(retry_after_s).encode()),
            (REQUEST_ID_HEADER.encode(), request_id),
        ],
    }
    body: HTTPResponseBodyEvent = {"type": "http.response.body", "body": _SHED_BODY, "more_body": False}
    await send(start)
    await send(body)


async def _stored_answer(scope: Scope, sessions: async_sessionmaker[AsyncSession], ttl: timedelta) -> bool:
    key = next((value for name, value in scope["headers"] if name == _IDEMPOTENCY_HEADER), None)
    if not key:
        return False
    try:
        return await has_answer(sessions, hashlib.sha256(key).hexdigest(), ttl=ttl)
    except Exception:  # the database is down or slow: refuse as if nothing were stored (the retry may retry)
        return False
