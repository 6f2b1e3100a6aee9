"""The overview: throughput per minute for the last hour, the outbox's state, which processes are alive."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from litestar import Request, Response, get

from services.admin import queries
from services.admin.access import console_of, page, session_of
from services.admin.render import chart
from shared.broker import HEARTBEAT_TIMEOUT_MS, StreamsBroker

RELAY_SILENT_S = 15
"""A relay announces itself every 5 s: one not heard from for three beats is shown as gone."""


@get("/")
async def overview(request: Request[Any, Any, Any]) -> Response[Any]:
    session_of(request)
    console = console_of(request)
    now = datetime.now(UTC)
    first = now.replace(second=0, microsecond=0) - timedelta(minutes=59)
    minutes = [first + timedelta(minutes=n) for n in range(60)]
    async with console.engine.connect() as connection:
        signups = await console.signups.read(connection, first, now)
        sent = await console.sent.read(connection, first, now)
        state = await queries.outbox_state(connection)
    redis_side = await asyncio.to_thread(_redis_side, console.broker)
    series = {
        "signups": [signups.get(minute, 0) for minute in minutes],
        "emails sent": [sent.get(minute, 0) for minute in minutes],
        "retries": redis_side["retries"],
        "dead letters": redis_side["dead_letters"],
    }
    return page(
        request,
        "overview.html",
        title="Overview",
        refresh=10,
        now=now,
        chart=chart(series),
        state=state,
        cap=queries.COUNT_CAP,
        dead_total=redis_side["dead_total"],
        workers=_alive(redis_side["workers"], now, HEARTBEAT_TIMEOUT_MS / 1000),
        relays=_alive(redis_side["relays"], now, RELAY_SILENT_S),
    )


def _redis_side(broker: StreamsBroker) -> dict[str, Any]:
    return {
        "retries": broker.tallies("retries"),
        "dead_letters": broker.tallies("dead_letters"),
        "dead_total": broker.dead_count(),
        "workers": broker.last_beats("worker"),
        "relays": broker.last_beats("relay"),
    }


def _alive(beats: list[tuple[str, datetime]], now: datetime, silent_s: float) -> list[dict[str, Any]]:
    return [{"name": name, "at": at, "alive": (now - at).total_seconds() <= silent_s} for name, at in beats]
