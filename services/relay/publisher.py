"""Turning claimed outbox rows into Dramatiq messages and enqueueing a batch of them in one round trip.

``enqueue_batch`` builds one message per row (its ``event_id`` is the message id, so a re-publish is a
duplicate the worker absorbs) and hands the batch to ``StreamsBroker.enqueue_many``: one script call that
adds every message to its stream with its locator, so either the whole batch reaches Redis or none of it
does. Any other broker gets a plain ``broker.enqueue`` loop.
"""

from __future__ import annotations

from typing import Any

import dramatiq

from services.relay.store import OutboxRow
from shared.broker import StreamsBroker


def to_message(row: OutboxRow) -> dramatiq.Message[Any]:
    """The message for ``row``."""
    return dramatiq.Message(
        queue_name=row.queue,
        actor_name=row.actor,
        args=(row.payload,),
        kwargs={},
        # The row's W3C context rides along, so the worker's span continues the signup's trace.
        options={"trace_id": row.trace_id, "trace_context": row.trace_context},
        message_id=str(row.event_id),
    )


def enqueue_batch(broker: dramatiq.Broker, rows: list[OutboxRow]) -> None:
    """Enqueue one message per row (blocking: call it off the event loop), each delayed by its row's
    ``delay_ms``. Raises the broker's errors."""
    messages = [(to_message(row), row.delay_ms) for row in rows]
    if isinstance(broker, StreamsBroker):
        broker.enqueue_many(messages)
        return
    for message, delay in messages:
        broker.enqueue(message, delay=delay)
