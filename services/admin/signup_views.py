"""One signup's timeline (the code ``signup trace`` prints), and keyset-paged lists of signups and of
published events not yet handled."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from litestar import Request, Response, get
from litestar.params import QueryParameter

from services.admin import queries
from services.admin.access import console_of, page, session_of
from signup_cli.trace import load_timeline

Text = Annotated[str, QueryParameter(max_length=200)]


@get("/signup")
async def signup_page(request: Request[Any, Any, Any], q: Text = "") -> Response[Any]:
    session_of(request)
    async with console_of(request).engine.connect() as connection:
        username = await queries.find_username(connection, q)
        found = await load_timeline(connection, username) if username else None
    if found is None:
        message = "No signup matches that username, email address or request id." if q else "Search above."
        return page(request, "message.html", title="Find a signup", message=message)
    steps, facts = found
    start = steps[0][0]
    rows = [(at, (at - start).total_seconds() * 1000, what) for at, what in steps]
    return page(request, "signup.html", title=f"Signup of {username}", rows=rows, facts=facts)


@get("/signups")
async def signups_page(request: Request[Any, Any, Any], before: Text = "") -> Response[Any]:
    session_of(request)
    cursor = _keyset(before)
    async with console_of(request).engine.connect() as connection:
        rows = await queries.signups_page(connection, before=cursor)
    last = rows[-1] if len(rows) == queries.PAGE else None
    next_before = f"{last.created_at.isoformat()}|{last.username}" if last is not None else None
    return page(request, "signups.html", title="Signups, newest first", rows=rows, next_before=next_before)


@get("/unhandled")
async def unhandled_page(request: Request[Any, Any, Any], after: Text = "") -> Response[Any]:
    session_of(request)
    keyset = _keyset(after)
    cursor = (keyset[0], int(keyset[1])) if keyset and keyset[1].isdigit() else None
    async with console_of(request).engine.connect() as connection:
        rows = await queries.unhandled_page(connection, after=cursor)
    last = rows[-1] if len(rows) == queries.PAGE else None
    next_after = f"{last.published_at.isoformat()}|{last.id}" if last is not None else None
    return page(
        request, "unhandled.html", title="Published, not yet handled", rows=rows, next_after=next_after
    )


def _keyset(text: str) -> tuple[datetime, str] | None:
    """A ``time|key`` cursor from a page's link; None for the first page or a malformed one."""
    at, _, key = text[:200].partition("|")
    try:
        moment = datetime.fromisoformat(at)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)), key
