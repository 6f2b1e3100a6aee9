"""Turning claimed outbox rows into Dramatiq messages and enqueueing a batch of them in one round trip.

``enqueue_batch`` does what ``RedisBroker.enqueue`` does for each message (fresh ``redis_message_id``, the
delay queue and ``eta`` for a delayed message, the broker's enqueue middleware hooks), and stores the whole
batch in one MULTI/EXEC: one round trip instead of one per message, and either every message of the batch
reaches Redis or none does. The messages are written with plain commands in the layout Dramatiq's
``dispatch`` script writes (``SignupRedisBroker.store_in``), a few commands per batch instead of a script
call per message. The same transaction writes each event's locator (``shared.locator``), which
reconciliation reads to tell a lost message from a waiting one, and ends with the wake-up tokens of each
queue it filled (``shared.wakeup``), so idle consumers fetch at once. Any other broker gets a plain
``broker.enqueue`` loop.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from typing import Any

import dramatiq
from dramatiq.common import current_millis, dq_name
from dramatiq.middleware import Middleware

from services.relay.store import OutboxRow
from shared.broker import SignupRedisBroker
from shared.locator import locator, locators_key
from shared.wakeup import push_wake


def to_message(row: OutboxRow, *, queue_name: str | None = None, **options: Any) -> dramatiq.Message[object]:
    """The message for ``row``: its ``event_id`` is the message id, so a re-publish is a duplicate."""
    return dramatiq.Message(
        queue_name=queue_name or row.queue,
        actor_name=row.actor,
        args=(row.payload,),
        kwargs={},
        # The row's W3C context rides along, so the worker's span continues the signup's trace.
        options={"trace_id": row.trace_id, "trace_context": row.trace_context, **options},
        message_id=str(row.event_id),
    )


def enqueue_batch(broker: dramatiq.Broker, rows: list[OutboxRow]) -> None:
    """Enqueue one message per row (blocking: call it off the event loop). Raises the broker's errors."""
    if not isinstance(broker, SignupRedisBroker):
        for row in rows:
            broker.enqueue(to_message(row), delay=row.delay_ms)
        return
    now = current_millis()
    messages = [
        _as_enqueued(row, redis_id, now) for row, redis_id in zip(rows, _redis_ids(len(rows)), strict=True)
    ]
    # Most middleware does nothing on enqueue: its no-op hooks, called per message, cost as much as building
    # the message.
    before, after = _hooked(broker, "before_enqueue"), _hooked(broker, "after_enqueue")
    if before:
        for message, row in zip(messages, rows, strict=True):
            broker.emit_before("enqueue", message, row.delay_ms)
    stored = [(m.queue_name, m.options["redis_message_id"], m.encode()) for m in messages]
    filled = Counter(queue_name for queue_name, _, _ in stored)
    # redis-py types its mapping too narrowly for a dict[str, str]
    locators: dict[Any, Any] = {
        m.message_id: locator(queue_name, redis_id)
        for m, (queue_name, redis_id, _) in zip(messages, stored, strict=True)
    }

    def fill(pipe: Any) -> None:
        broker.store_in(pipe, stored)
        pipe.hset(locators_key(broker.namespace), mapping=locators)
        for queue_name, count in filled.items():
            push_wake(pipe, namespace=broker.namespace, queue_name=queue_name, count=count)

    broker.transaction(fill)
    if after:
        for message, row in zip(messages, rows, strict=True):
            broker.emit_after("enqueue", message, row.delay_ms)


def _redis_ids(count: int) -> list[str]:
    """``count`` random version-4 UUIDs, as ``RedisBroker.enqueue`` gives each enqueue, from one read of
    ``os.urandom``: a read per message released and re-took the GIL each time, the largest single item in a
    profile of the relay's drain."""
    raw = os.urandom(16 * count)
    return [str(uuid.UUID(bytes=raw[i : i + 16], version=4)) for i in range(0, 16 * count, 16)]


def _as_enqueued(row: OutboxRow, redis_message_id: str, now_ms: int) -> dramatiq.Message[object]:
    # Mirrors RedisBroker.enqueue: each enqueue gets its own redis id; any non-None delay (even 0) goes
    # through the delay queue with an eta.
    if row.delay_ms is None:
        return to_message(row, redis_message_id=redis_message_id)
    return to_message(
        row, queue_name=dq_name(row.queue), redis_message_id=redis_message_id, eta=now_ms + row.delay_ms
    )


def _hooked(broker: dramatiq.Broker, hook: str) -> bool:
    """Whether any of ``broker``'s middleware overrides ``hook`` (Dramatiq's are no-ops on ``Middleware``)."""
    return any(getattr(type(m), hook) is not getattr(Middleware, hook) for m in broker.middleware)
