"""Mapping exceptions to responses: a JSON body and the right status, never a bare 500 or a traceback."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import dramatiq.errors
import redis.exceptions
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from services.api.admission import SHED_MESSAGE, Shed
from services.api.client_limits import ClientLimited
from services.api.idempotency import HEADER as IDEMPOTENCY_HEADER
from services.api.idempotency import KeyReused
from services.api.pages import EXPIRED, INVALID, SUPERSEDED, page, wants_html
from services.api.resend import ResendBusy
from services.api.routes import CrossSiteForm
from services.api.schemas import ErrorBody, FieldError, InvalidRequest
from services.api.signup import Taken, VerifyEmailExpired, VerifyEmailNotFound, VerifyEmailSuperseded
from services.api.slow_clients import BodyTimeout
from services.api.tracing import request_id_from_headers
from shared.database import database_unavailable
from shared.logging import get_logger

log = get_logger()

RETRY_AFTER_S = "2"

_MISSING_PARAMETER = re.compile(r"Missing required \w+ parameter '([^']+)'")

# A backing service is down or unreachable: the client may retry (503 + Retry-After), nothing is lost.
UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    PoolTimeout,
    OperationalError,
    InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    dramatiq.errors.BrokerConnectionError,  # the broker may wrap a redis error in its own
)


def _request_id(request: Request[Any, Any, Any]) -> str | None:
    request_id = request.scope.get("state", {}).get("request_id")
    return request_id if isinstance(request_id, str) else None


def _json(
    request: Request[Any, Any, Any], status: int, body: ErrorBody, **headers: str
) -> Response[ErrorBody]:
    body.trace_id = _request_id(request)
    return Response(body, status_code=status, headers=headers or None)


def invalid_request(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    assert isinstance(exc, InvalidRequest)
    return _json(request, 400, ErrorBody(error="invalid request", fields=exc.errors))


def litestar_validation(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    """Litestar's own validation (query parameters): the same shape as ours."""
    assert isinstance(exc, ValidationException)
    extra = exc.extra if isinstance(exc.extra, list) else []
    fields = [
        FieldError(field=str(item.get("key", "?")), message=str(item.get("message", ""))) for item in extra
    ]
    # A missing parameter comes with its name in the message only (found by the fuzz test's check that
    # every 400 names a field).
    if not fields and (missing := _MISSING_PARAMETER.search(exc.detail)):
        fields = [FieldError(field=missing.group(1), message="required")]
    if request.url.path == "/v1/verify_email" and wants_html(request):  # a link cut short in a browser
        return page(INVALID, status=400)
    return _json(request, 400, ErrorBody(error="invalid request", fields=fields))


def taken(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    assert isinstance(exc, Taken)
    field = FieldError(field=exc.field, message=f"{exc.field} is already taken")
    return _json(request, 409, ErrorBody(error=f"{exc.field} is already taken", fields=[field]))


def not_found(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    if wants_html(request):
        return page(INVALID, status=404)
    return _json(request, 404, ErrorBody(error="unknown verification link"))


def expired(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    if wants_html(request):
        return page(EXPIRED, status=410)
    body = ErrorBody(error="verification link expired; ask for a new one with POST /v1/resend_verify_email")
    return _json(request, 410, body)


def superseded(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    if wants_html(request):
        return page(SUPERSEDED, status=410)
    return _json(request, 410, ErrorBody(error="a newer verification email was sent; use the link in it"))


def unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    log.warning("backing service unavailable", error=type(exc).__name__, detail=str(exc)[:200])
    body = ErrorBody(error="service temporarily unavailable, retry later")
    return _json(request, 503, body, **{"Retry-After": RETRY_AFTER_S})


def shed(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    assert isinstance(exc, Shed)  # counted and logged (rate-limited) where it was raised
    body = ErrorBody(error=SHED_MESSAGE)
    return _json(request, 503, body, **{"Retry-After": str(exc.retry_after_s)})


def resend_busy(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    body = ErrorBody(error="too many requests at once, retry later")
    return _json(request, 503, body, **{"Retry-After": RETRY_AFTER_S})


def body_timeout(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    # The rest of the body may still come: the connection cannot carry another request.
    body = ErrorBody(error="the request body did not arrive in time")
    return _json(request, 408, body, Connection="close")


def client_limited(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    assert isinstance(exc, ClientLimited)
    body = ErrorBody(error="too many requests from this client, retry later")
    return _json(request, 429, body, **{"Retry-After": str(exc.retry_after_s)})


def cross_site(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    return _json(request, 403, ErrorBody(error="a form from another site cannot verify an address"))


def key_reused(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    field = FieldError(field=IDEMPOTENCY_HEADER, message="used before with another request body")
    return _json(request, 422, ErrorBody(error="Idempotency-Key reused with another body", fields=[field]))


def http_error(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if _request_id(request) is None:
        # Litestar raises 404 (no such path) and 405 in its router, before any middleware runs: these
        # answers get their request id and their request log line here.
        request_id = request_id_from_headers(dict(request.headers))
        request.scope.setdefault("state", {})["request_id"] = request_id
        headers["X-Request-ID"] = request_id
        log.info(
            "request",
            method=request.method,
            path=request.url.path,
            status=exc.status_code,
            request_id=request_id,
        )
    return _json(request, exc.status_code, ErrorBody(error=exc.detail), **headers)


def unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    if isinstance(exc, UNAVAILABLE) or database_unavailable(exc):
        return unavailable(request, exc)
    log.exception("unhandled error", path=request.url.path)
    return _json(request, 500, ErrorBody(error="internal error; quote the trace id when reporting it"))


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    InvalidRequest: invalid_request,
    ValidationException: litestar_validation,
    Taken: taken,
    VerifyEmailNotFound: not_found,
    VerifyEmailExpired: expired,
    VerifyEmailSuperseded: superseded,
    Shed: shed,
    KeyReused: key_reused,
    ResendBusy: resend_busy,
    ClientLimited: client_limited,
    BodyTimeout: body_timeout,
    CrossSiteForm: cross_site,
    HTTPException: http_error,
    Exception: unexpected,
}
