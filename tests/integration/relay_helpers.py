"""Helpers for the relay tests: bulk outbox inserts, an in-process relay, outbox state queries."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec

from lab.harness.database import unpublished_rows
from services.relay.relay import Relay, build_relay
from shared.database import asyncpg_dsn
from shared.settings import Settings

INSERT_ROWS = """
INSERT INTO outbox (event_id, actor, queue, payload, trace_id, available_at)
SELECT gen_random_uuid(), 'send_verify_email', 'critical',
       jsonb_build_object('username', 'user_' || g), 'trace-' || g,
       now() + make_interval(secs => $2::float8)
FROM generate_series(1, $1) AS g
RETURNING event_id::text
"""


async def connect(settings: Settings) -> Any:
    return await asyncpg.connect(asyncpg_dsn(settings.database_url))


async def insert_rows(connection: Any, count: int, *, due_in_s: float = 0.0) -> list[str]:
    """Insert ``count`` outbox rows in one statement (in ``connection``'s transaction, if any)."""
    return [r["event_id"] for r in await connection.fetch(INSERT_ROWS, count, due_in_s)]


async def add_rows(settings: Settings, count: int, *, due_in_s: float = 0.0) -> list[str]:
    connection = await connect(settings)
    try:
        return await insert_rows(connection, count, due_in_s=due_in_s)
    finally:
        await connection.close()


async def unpublished(settings: Settings) -> int:
    return await unpublished_rows(settings.database_url)


async def all_published(settings: Settings) -> bool:
    return await unpublished(settings) == 0


async def fetch(settings: Settings, query: str, *args: Any) -> list[Any]:
    connection = await connect(settings)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def running_relay(settings: Settings, **options: Any) -> AsyncIterator[Relay]:
    """A relay running as a task of this event loop; stopped (and checked not to have crashed) on exit."""
    overrides = {k: options.pop(k) for k in list(options) if k in Settings.__struct_fields__}
    relay = build_relay(msgspec.structs.replace(settings, **overrides), **options)
    task = asyncio.create_task(relay.run())
    try:
        yield relay
        assert not task.done(), f"the relay stopped on its own: {task}"
    finally:
        relay.stop()
        await asyncio.wait_for(task, timeout=30)


@contextlib.asynccontextmanager
async def running_relays(settings: Settings, count: int, **options: Any) -> AsyncIterator[list[Relay]]:
    """``count`` relays running at once in this event loop."""
    async with contextlib.AsyncExitStack() as exits:
        yield [
            await exits.enter_async_context(running_relay(settings, **dict(options))) for _ in range(count)
        ]
