"""Who may use the operator console: operators from ``CONSOLE_OPERATORS``, a signed session, CSRF tokens.

Every secret here is derived from the operators' credentials (an HMAC key hashed from them): no extra
setting, the same on every API replica, and changing a password ends every session. A session cookie is
``name.expiry.nonce.mac``; a form's CSRF token is an HMAC of the session's nonce, so it is per session and
useless without the cookie. Before login, the login form's token is bound the same way to a random nonce in a
cookie of its own. Every comparison is constant-time; a password is checked against every operator, so the
time taken does not tell which names exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

SESSION_COOKIE = "console_session"
LOGIN_COOKIE = "console_login"
SESSION_S = 8 * 3600
"""A session ends after a working day; the operator logs in again."""


@dataclass(frozen=True)
class Session:
    operator: str
    nonce: str


class Guard:
    """Checks credentials, issues and reads sessions, makes and checks CSRF tokens."""

    def __init__(self, operators: dict[str, str]) -> None:
        if not operators:
            raise ValueError("the console needs at least one operator")
        material = "\n".join(f"{name}:{password}" for name, password in sorted(operators.items()))
        self._key = hashlib.sha256(b"signup-console\0" + material.encode()).digest()
        self._digests = {name: self._digest(name, password) for name, password in operators.items()}

    def _digest(self, name: str, password: str) -> bytes:
        return hmac.new(self._key, f"{name}\0{password}".encode(), hashlib.sha256).digest()

    def _mac(self, purpose: str, text: str) -> str:
        mac = hmac.new(self._key, f"{purpose}\0{text}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def check(self, name: str, password: str) -> str | None:
        """The operator's name when ``password`` is theirs, else None; compared against every operator."""
        given = self._digest(name[:100], password[:1000])
        found = None
        for operator, digest in self._digests.items():
            if hmac.compare_digest(given, digest):
                found = operator
        return found

    def session_cookie(self, operator: str, *, now: float | None = None) -> str:
        expiry = int((now or time.time()) + SESSION_S)
        body = f"{operator}.{expiry}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self._mac('session', body)}"

    def session(self, cookie: str | None, *, now: float | None = None) -> Session | None:
        """The session a cookie carries, if its MAC is right, it has not expired and its operator still
        exists; else None."""
        if not cookie or len(cookie) > 300 or cookie.count(".") != 3:
            return None
        body, mac = cookie.rsplit(".", 1)
        if not hmac.compare_digest(mac, self._mac("session", body)):
            return None
        operator, expiry, nonce = body.split(".")
        if not expiry.isdigit() or int(expiry) < (now or time.time()) or operator not in self._digests:
            return None
        return Session(operator, nonce)

    def csrf(self, nonce: str) -> str:
        """The CSRF token of the session (or login form) with ``nonce``."""
        return self._mac("csrf", nonce)

    def csrf_ok(self, nonce: str | None, token: str | None) -> bool:
        return bool(nonce and token) and hmac.compare_digest(str(token), self.csrf(str(nonce)))


def same_origin(headers: dict[str, str], host: str) -> bool:
    """Whether a form post comes from a page of the console itself: ``Sec-Fetch-Site`` where the browser
    sends it, else ``Origin`` against the ``Host`` (a second fence beside the CSRF token)."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None or origin == "null":
        return origin is None  # no Origin: not a browser's cross-site form post
    return origin.split("://", 1)[-1] == host
