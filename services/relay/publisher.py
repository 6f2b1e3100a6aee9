"""Turning claimed outbox rows into Dramatiq messages and enqueueing a batch of them in one round trip.

``enqueue_batch`` does what ``RedisBroker.enqueue`` does for each message (fresh ``redis_message_id``, the
delay queue and ``eta`` for a delayed message, the broker's enqueue middleware hooks), but sends the whole
batch through one MULTI/EXEC pipeline: one round trip instead of one per message, and either every message
of the batch reaches Redis or none does. The same transaction writes each event's locator
(``shared.locator``), which reconciliation reads to tell a lost message from a waiting one. The pipeline
ends with the wake-up tokens of each queue it filled (``shared.wakeup``), so idle consumers fetch at once.
Any other broker gets a plain ``broker.enqueue`` loop.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import dramatiq
from dramatiq.common import current_millis, dq_name

from services.relay.store import OutboxRow
from shared.broker import SignupRedisBroker
from shared.locator import locator, locators_key
from shared.wakeup import push_wake


def to_message(row: OutboxRow) -> dramatiq.Message[object]:
    """The message for ``row``: its ``event_id`` is the message id, so a re-publish is a duplicate."""
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
    """Enqueue one message per row (blocking: call it off the event loop). Raises the broker's errors."""
    if not isinstance(broker, SignupRedisBroker):
        for row in rows:
            broker.enqueue(to_message(row), delay=row.delay_ms)
        return
    emitted = []
    calls = []
    filled: Counter[str] = Counter()
    locators: dict[Any, Any] = {}  # redis-py types its mapping too narrowly for a dict[str, str]
    for row in rows:
        message, queue_name = _prepare(to_message(row), row.delay_ms)
        broker.emit_before("enqueue", message, row.delay_ms)
        # No maintenance pass from the relay: the workers run it.
        calls.append(
            broker.enqueue_args(
                queue_name, message.options["redis_message_id"], message.encode(), maintenance=False
            )
        )
        emitted.append((message, row.delay_ms))
        filled[queue_name] += 1
        locators[message.message_id] = locator(queue_name, message.options["redis_message_id"])

    def fill(pipe: Any) -> None:
        for args in calls:
            broker.dispatch_in(pipe, args)
        pipe.hset(locators_key(broker.namespace), mapping=locators)
        for queue_name, count in filled.items():
            push_wake(pipe, namespace=broker.namespace, queue_name=queue_name, count=count)

    broker.transaction(fill)
    for message, delay in emitted:
        broker.emit_after("enqueue", message, delay)


def _prepare(message: dramatiq.Message[object], delay: int | None) -> tuple[dramatiq.Message[object], str]:
    # Mirrors RedisBroker.enqueue: each enqueue gets its own redis id; any non-None delay (even 0) goes
    # through the delay queue with an eta.
    message = message.copy(options={"redis_message_id": str(uuid.uuid4())})
    if delay is None:
        return message, message.queue_name
    queue_name = dq_name(message.queue_name)
    return message.copy(queue_name=queue_name, options={"eta": current_millis() + delay}), queue_name
