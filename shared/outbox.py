"""Writing to the transactional outbox: one row per message, in the caller's transaction."""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from shared.database import outbox
from shared.messages import Message
from shared.telemetry import current_trace_context


async def add_outbox_event(
    session: AsyncSession,
    message: Message,
    *,
    trace_id: str | None,
    available_at: datetime | None = None,
) -> uuid.UUID:
    """Insert ``message`` as one outbox row in ``session``'s open transaction and return its ``event_id``.

    The row commits or rolls back with whatever else the transaction wrote: that is the whole point. The
    row names the message's actor and queue, so the relay needs no knowledge of message types.
    ``available_at`` (default: now, by the database's clock) delays publication. The current span's W3C
    trace context is stored with it, so that the worker's span continues the writer's trace.
    """
    event_id = uuid.uuid4()
    values = {
        "event_id": event_id,
        "actor": message.actor,
        "queue": message.queue,
        "payload": msgspec.to_builtins(message),
        "trace_id": trace_id,
        "trace_context": current_trace_context(),
    }
    if available_at is not None:
        values["available_at"] = available_at
    await session.execute(outbox.insert().values(**values))
    return event_id


def event_id_of(message_id: str) -> uuid.UUID | None:
    """The outbox event id a message id stands for, or None for a message that is not an outbox event."""
    try:
        return uuid.UUID(message_id)
    except ValueError:
        return None  # not an outbox event (no row to mark)
