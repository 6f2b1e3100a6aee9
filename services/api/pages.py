"""Small HTML pages for a person who opens the email's link (or its resend form) in a browser.

A request that prefers ``text/html`` gets one of these instead of JSON. Each is self-contained: no script,
no resource from elsewhere, a Content-Security-Policy that allows only its own inline style (by hash) and
form posts to this origin. Opening the email's link shows ``CONFIRM``: one button whose same-origin form
posts the id and code (hidden fields) back; only that ``POST`` verifies, so a mail scanner or link preview
that fetches the link verifies nothing. No other page is given the code.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from dataclasses import dataclass
from typing import Any

import jinja2
from litestar import MediaType, Request, Response

_STYLE = (
    "body{font:1.1rem/1.5 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1b1d21}"
    "main{max-width:32rem;margin:12vh auto;padding:2rem;background:#fff;border-radius:8px;"
    "box-shadow:0 1px 4px #0002}h1{font-size:1.6rem;margin-top:0}label{display:block;margin:1rem 0 .3rem}"
    "input{width:100%;box-sizing:border-box;padding:.5rem;font:inherit;border:1px solid #767676}"
    "button{margin-top:1rem;padding:.6rem 1rem;font:inherit;background:#0b57d0;color:#fff;border:0;"
    "border-radius:4px}:focus-visible{outline:3px solid #e37400;outline-offset:2px}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # The page's own URL holds the code: it must not travel on as a Referer, nor stay in a shared cache.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Page:
    title: str
    message: str
    resend_form: bool = False
    verify_form: bool = False


CONFIRM = Page(
    "Confirm your email address",
    "Press the button to confirm that this email address is yours.",
    verify_form=True,
)
VERIFIED = Page("Email verified", "Thank you: your email address is verified. You can close this page.")
ALREADY_VERIFIED = Page("Already verified", "This email address was verified already. Nothing more to do.")
EXPIRED = Page(
    "This link has expired",
    "Links in our emails work for a short while only. Enter your address and we will send a new one.",
    resend_form=True,
)
SUPERSEDED = Page(
    "A newer email was sent",
    "We have sent you a newer verification email since this one: please use the link in the newest email.",
)
INVALID = Page(
    "This link does not work",
    "The link is incomplete or wrong. Copy the whole link from the email, or ask for a new email below.",
    resend_form=True,
)
RESEND_ACCEPTED = Page(
    "Check your inbox",
    "If an account awaits verification at that address, a new email is on its way. It can take a minute.",
)


def wants_html(request: Request[Any, Any, Any]) -> bool:
    """Whether the client prefers an HTML page to JSON (a browser does; curl and API clients do not)."""
    return request.accept.best_match([MediaType.JSON, MediaType.HTML]) == MediaType.HTML


def page(shown: Page, *, status: int, link: tuple[int, str] | None = None) -> Response[Any]:
    """``shown`` rendered, with ``status`` and the security headers; ``link`` (id, code) fills the verify
    form of ``CONFIRM``, and only that page's."""
    email_id, code = link if shown.verify_form and link is not None else (0, "")
    html = (
        _templates()
        .get_template("page.html")
        .render(
            title=shown.title,
            message=shown.message,
            resend_form=shown.resend_form,
            verify_form=shown.verify_form,
            email_id=email_id,
            secret_code=code,
            style=_STYLE,
        )
    )
    return Response(html, status_code=status, media_type=MediaType.HTML, headers=SECURITY_HEADERS)


@functools.cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("services.api", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
