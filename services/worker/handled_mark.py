"""Recording that an outbox event was handled, for any kind of message (reconciliation's input, DESIGN §13).

The actor sets ``outbox.handled_at`` after the handler returned and before Dramatiq acknowledges the
message, so a message that has left Redis was handled in the database first (or its message is still in
Redis, being retried). A dead-lettered message counts as handled too (``DeadLetterHandled``): it stays dead
until ``signup dlq replay``, which clears the mark again.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from dramatiq import Broker, Middleware
from dramatiq.broker import MessageProxy
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.database import outbox
from shared.logging import get_logger
from shared.outbox import event_id_of

log = get_logger()


_MARK_HANDLED = (
    outbox.update()
    .where(outbox.c.event_id == sa.bindparam("event"), outbox.c.handled_at.is_(None))
    .values(handled_at=sa.func.now())
)


async def mark_handled(connection: AsyncConnection, message_id: str) -> None:
    """Set ``handled_at`` on the outbox row of ``message_id``, if it has one and it is not set yet (in a
    transaction of its own on ``connection``, the one the message's handler used)."""
    event_id = event_id_of(message_id)
    if event_id is None:
        return
    async with connection.begin():
        await connection.execute(_MARK_HANDLED, {"event": event_id})


async def prepare_statement(connection: AsyncConnection) -> None:
    """Run ``mark_handled``'s statement once for no row, in the caller's transaction (see
    ``handlers.prepare_statements``)."""
    await connection.execute(_MARK_HANDLED, {"event": uuid.uuid4()})


class DeadLetterHandled(Middleware):
    """Marks a dead-lettered message's event handled, so reconciliation leaves it dead."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        from dramatiq.asyncio import get_event_loop_thread

        loop_thread = get_event_loop_thread()
        try:
            if loop_thread is None:
                raise RuntimeError("the AsyncIO middleware's event loop is not running")
            loop_thread.run_coroutine(self._mark(message.message_id))
        except Exception as exc:
            # It is in the dead letters all the same: reconciliation finds it there and leaves it alone.
            log.warning("dead letter not marked handled", error=repr(exc))

    async def _mark(self, message_id: str) -> None:
        async with self.engine.connect() as connection:
            await mark_handled(connection, message_id)
