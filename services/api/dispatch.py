"""How the API hands a message on to the worker (DESIGN §5).

A use case calls ``Dispatcher.dispatch`` inside its transaction, before the commit. ``OutboxDispatcher``
inserts an outbox row in that same transaction; the relay publishes it after the commit.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from shared.messages import Message
from shared.outbox import add_outbox_event


class Dispatcher(Protocol):
    """Hands a message on to the worker, inside the caller's transaction."""

    needs_redis: bool
    """Whether the API itself talks to Redis (``/readyz`` then checks it)."""

    async def dispatch(self, session: AsyncSession, message: Message, *, trace_id: str | None) -> None: ...

    async def close(self) -> None: ...


class OutboxDispatcher:
    """Writes the message to the outbox table, in the caller's own transaction."""

    needs_redis = False

    async def dispatch(self, session: AsyncSession, message: Message, *, trace_id: str | None) -> None:
        await add_outbox_event(session, message, trace_id=trace_id)

    async def close(self) -> None:
        return None
