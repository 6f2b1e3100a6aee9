"""Access to the console: logging in and out, and what every page and action checks.

Each GET needs a session (else the login page answers); each POST needs a session, a same-origin request and
the session's CSRF token (else 403). Actions are logged with the operator's name.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.response import Redirect
from sqlalchemy.ext.asyncio import AsyncEngine

from services.admin.auth import LOGIN_COOKIE, SESSION_COOKIE, SESSION_S, Guard, Session, same_origin
from services.admin.login_limits import LoginLimiter
from services.admin.queries import SENT_PER_MINUTE, SIGNUPS_PER_MINUTE, MinuteCounts
from services.admin.render import html
from shared.broker import StreamsBroker
from shared.logging import get_logger

log = get_logger()


@dataclass
class Console:
    """What the pages share: the operators' guard, the database, the broker."""

    guard: Guard
    engine: AsyncEngine
    broker: StreamsBroker
    secure_cookies: bool
    limiter: LoginLimiter = field(default_factory=LoginLimiter)
    """Failed logins per client address and per name typed (429 past the limit)."""
    signups: MinuteCounts = field(default_factory=lambda: MinuteCounts(SIGNUPS_PER_MINUTE))
    sent: MinuteCounts = field(default_factory=lambda: MinuteCounts(SENT_PER_MINUTE))
    """The overview's per-minute charts, closed minutes remembered (``queries.MinuteCounts``)."""


class NotLoggedIn(Exception):
    """A page asked for without a valid session: the login page answers."""


class Refused(Exception):
    """An action without a session, from another site, or without the session's CSRF token: 403."""


def console_of(request: Request[Any, Any, Any]) -> Console:
    console: Console = request.app.state.console
    return console


def session_of(request: Request[Any, Any, Any]) -> Session:
    session = console_of(request).guard.session(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise NotLoggedIn
    return session


async def authorised(request: Request[Any, Any, Any]) -> tuple[Session, dict[str, str]]:
    """The session and form of a POST that may act; raises ``Refused`` otherwise."""
    guard = console_of(request).guard
    session = guard.session(request.cookies.get(SESSION_COOKIE))
    form = {key: str(value) for key, value in (await request.form()).items()}
    host = request.headers.get("host", "")
    if session is None or not same_origin(dict(request.headers), host):
        raise Refused
    if not guard.csrf_ok(session.nonce, form.get("csrf")):
        raise Refused
    return session, form


def page(request: Request[Any, Any, Any], template: str, **context: Any) -> Response[Any]:
    """A page for the logged-in operator, with their CSRF token for its forms."""
    session = session_of(request)
    csrf = console_of(request).guard.csrf(session.nonce)
    return html(template, operator=session.operator, csrf=csrf, **context)


def _cookie(console: Console, key: str, value: str, max_age: int) -> Cookie:
    return Cookie(
        key=key,
        value=value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=console.secure_cookies,
    )


# Logging in and out. ---------------------------------------------------------------------------------------


@get("/login", sync_to_thread=False)
def login_page(request: Request[Any, Any, Any]) -> Response[Any]:
    console = console_of(request)
    if console.guard.session(request.cookies.get(SESSION_COOKIE)):
        return Redirect("/")
    return _login_form(console, failed=False)


def _login_form(console: Console, *, failed: bool) -> Response[Any]:
    nonce = secrets.token_urlsafe(16)
    return html(
        "login.html",
        status=401 if failed else 200,
        title="Operator console",
        failed=failed,
        login_csrf=console.guard.csrf(nonce),
        cookies=[_cookie(console, LOGIN_COOKIE, nonce, 3600)],
    )


@post("/login")
async def login(request: Request[Any, Any, Any]) -> Response[Any]:
    console = console_of(request)
    form = {key: str(value) for key, value in (await request.form()).items()}
    if not same_origin(dict(request.headers), request.headers.get("host", "")) or not console.guard.csrf_ok(
        request.cookies.get(LOGIN_COOKIE), form.get("csrf")
    ):
        raise Refused
    name = form.get("name", "")
    keys = console.limiter.keys(request.client.host if request.client else "", name)
    wait = console.limiter.retry_after(keys)
    if wait:
        # The password is not checked: a right one must not be told apart while the limit holds.
        log.warning("console login rate-limited", retry_after_s=wait)
        return Response(
            "Too many failed logins; try again later.\n",
            status_code=429,
            media_type="text/plain",
            headers={"Retry-After": str(wait)},
        )
    operator = console.guard.check(name, form.get("password", ""))
    if operator is None:
        console.limiter.failed(keys)
        log.warning("console login refused")  # neither the name nor the password: either may be a secret
        return _login_form(console, failed=True)
    log.info("console login", operator=operator)
    response: Response[Any] = Redirect("/", status_code=303)
    response.set_cookie(_cookie(console, SESSION_COOKIE, console.guard.session_cookie(operator), SESSION_S))
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


@post("/logout")
async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
    session, _ = await authorised(request)
    log.info("console logout", operator=session.operator)
    response: Response[Any] = Redirect("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
