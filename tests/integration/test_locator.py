"""The seam with Dramatiq 2.2.1's Redis layout: every enqueue path writes the event's locator, and
``locate.lua`` finds a message wherever Dramatiq keeps it (queued, delayed, held by a consumer, dead-lettered)
and nowhere once it is gone, on a real Redis and Dramatiq's own consumer.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from dramatiq import Message

from services.relay.publisher import enqueue_batch
from services.relay.store import OutboxRow
from shared.broker import SignupRedisBroker, create_broker
from shared.locator import locate, locators_key
from shared.settings import Settings


@pytest.fixture
def broker(settings: Settings, db: Any) -> Iterator[SignupRedisBroker]:
    broker = create_broker(settings)
    broker.declare_queue("critical")
    yield broker
    broker.close()


def message() -> Message[Any]:
    return Message(
        queue_name="critical",
        actor_name="send_verify_email",
        args=({"username": "alice"},),
        kwargs={},
        options={},
        message_id=str(uuid.uuid4()),
    )


def fetch(consumer: Any) -> Any:
    """The next message from Dramatiq's own consumer (it answers None while it polls)."""
    while (fetched := next(consumer)) is None:
        pass
    return fetched


def here(broker: SignupRedisBroker, event_id: str) -> bool:
    [found] = locate(broker.client, broker.namespace, [event_id])
    return found


def located(broker: SignupRedisBroker, event_id: str) -> str:
    client: Any = broker.client
    return str(client.hget(locators_key(broker.namespace), event_id).decode())


def test_an_enqueued_message_is_found_until_its_queue_list_is_lost(broker: SignupRedisBroker) -> None:
    sent = broker.enqueue(message())
    assert located(broker, sent.message_id) == f"critical {sent.options['redis_message_id']}"
    assert here(broker, sent.message_id)
    broker.client.delete("dramatiq:critical")  # the list; the .msgs hash and the locator survive
    assert not here(broker, sent.message_id)


def test_a_delayed_message_is_found_in_the_delay_queue(broker: SignupRedisBroker) -> None:
    sent = broker.enqueue(message(), delay=60_000)
    assert located(broker, sent.message_id).startswith("critical.DQ ")
    assert here(broker, sent.message_id)


def test_a_fetched_message_is_found_while_held_then_dead_lettered_then_not_after_flushall(
    broker: SignupRedisBroker,
) -> None:
    sent = broker.enqueue(message())
    consumer = broker.consume("critical", prefetch=1, timeout=100)
    try:
        fetched = fetch(consumer)
        assert not broker.client.exists("dramatiq:critical")  # the list is empty, so gone
        assert here(broker, sent.message_id)  # held: in this broker's ack set
        consumer.nack(fetched)
        assert broker.client.zscore("dramatiq:critical.XQ", sent.options["redis_message_id"]) is not None
        assert here(broker, sent.message_id)  # dead-lettered
    finally:
        consumer.close()
    broker.client.flushall()
    assert not here(broker, sent.message_id)


def test_an_acked_message_is_gone(broker: SignupRedisBroker) -> None:
    sent = broker.enqueue(message())
    consumer = broker.consume("critical", prefetch=1, timeout=100)
    try:
        fetched = fetch(consumer)
        consumer.ack(fetched)
    finally:
        consumer.close()
    assert not here(broker, sent.message_id)


def test_the_relay_batch_writes_locators_in_its_transaction(broker: SignupRedisBroker) -> None:
    rows = [
        OutboxRow(
            id=n,
            event_id=uuid.uuid4(),
            actor="send_verify_email",
            queue="critical",
            payload={"username": f"u{n}"},
            trace_id=None,
            delay_ms=None if n % 2 else 5000,
        )
        for n in range(1, 5)
    ]
    enqueue_batch(broker, rows)
    ids = [str(row.event_id) for row in rows]
    assert [located(broker, i).split()[0] for i in ids] == ["critical", "critical.DQ"] * 2
    assert locate(broker.client, broker.namespace, [*ids, str(uuid.uuid4())]) == [True] * 4 + [False]


def test_a_retry_moves_the_locator_with_the_message(broker: SignupRedisBroker) -> None:
    """Dramatiq's Retries middleware re-enqueues (a new redis id, the delay queue) before the ack."""
    sent = broker.enqueue(message())
    consumer = broker.consume("critical", prefetch=1, timeout=100)
    try:
        fetched = fetch(consumer)
        retry = broker.enqueue(fetched.copy(options={"retries": 1}), delay=60_000)
        assert located(broker, sent.message_id) == f"critical.DQ {retry.options['redis_message_id']}"
        consumer.ack(fetched)
    finally:
        consumer.close()
    assert here(broker, sent.message_id)
