"""The console's HTML: jinja2 templates, one stylesheet allowed by its hash, a strict CSP, SVG charts.

No script at all: pages refresh with ``<meta http-equiv=refresh>``, actions are plain form posts, and the
chart is inline SVG whose colours are presentation attributes (not styles), so the policy allows nothing
but the one stylesheet and form posts to the console itself.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import jinja2
from litestar import MediaType, Response

_STYLE = (
    "body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1b1d21}"
    "header{background:#1b1d21;color:#fff;padding:.5rem 1rem;display:flex;gap:1.2rem;align-items:center}"
    "header a{color:#fff}header form{margin-left:auto}main{max-width:70rem;margin:1rem auto;padding:0 1rem}"
    "h1{font-size:1.4rem}table{border-collapse:collapse;width:100%;background:#fff}"
    "td,th{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}"
    ".num{text-align:right;font-variant-numeric:tabular-nums}.cards{display:flex;flex-wrap:wrap;gap:.8rem}"
    ".card{background:#fff;padding:.6rem 1rem;border-radius:6px;box-shadow:0 1px 3px #0002;min-width:9rem}"
    ".card b{display:block;font-size:1.5rem}.bad{color:#b3261e}.ok{color:#146c2e}"
    "button{padding:.35rem .8rem;font:inherit;background:#0b57d0;color:#fff;border:0;border-radius:4px}"
    "button.danger{background:#b3261e}input{padding:.35rem;font:inherit;border:1px solid #767676}"
    "form.inline{display:inline}code{font-size:.85em;word-break:break-all}.muted{color:#5f6368}"
    "svg{background:#fff;border-radius:6px}:focus-visible{outline:3px solid #e37400;outline-offset:2px}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()

CSP = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

SERIES_COLOURS = ("#0b57d0", "#146c2e", "#e37400", "#b3261e")


def html(template: str, *, status: int = 200, cookies: Sequence[Any] = (), **context: Any) -> Response[Any]:
    """``template`` rendered with ``context``, with the security headers."""
    body = _templates().get_template(template).render(style=_STYLE, **context)
    return Response(
        body, status_code=status, media_type=MediaType.HTML, headers=SECURITY_HEADERS, cookies=list(cookies)
    )


def chart(series: dict[str, list[int]], *, width: int = 660, height: int = 160) -> dict[str, Any]:
    """An SVG line chart of per-minute series (oldest first, equal lengths): polyline points, the scale's
    top and each series' colour, for ``chart.html``."""
    top = max([1, *(max(values, default=0) for values in series.values())])
    lines = []
    for (name, values), colour in zip(series.items(), SERIES_COLOURS, strict=False):
        step = width / max(1, len(values) - 1)
        points = " ".join(
            f"{i * step:.1f},{height - value / top * (height - 10):.1f}" for i, value in enumerate(values)
        )
        lines.append({"name": name, "points": points, "colour": colour, "total": sum(values)})
    return {"width": width, "height": height, "top": top, "lines": lines}


def ago(at: datetime | None, now: datetime | None = None) -> str:
    """How long ago ``at`` was, for a person: ``42 s``, ``7 min``, ``3 h``."""
    if at is None:
        return "-"
    seconds = max(0, int(((now or datetime.now(UTC)) - at).total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


@functools.cache
def _templates() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("services.admin", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    environment.filters["ago"] = ago
    return environment
