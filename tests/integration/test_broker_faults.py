"""The shared broker under Redis failures: nothing a live consumer held is stranded, no thread dies."""

from __future__ import annotations

import time

import dramatiq
import pytest
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.errors import ConnectionClosed

from shared.broker import create_broker
from shared.settings import Settings
from tests.support import RedisServer

QUEUE = "faults_test"


def next_message(consumer: Consumer, *, timeout: float = 5.0) -> MessageProxy | None:
    """The consumer's next message, or None if none comes within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = next(consumer)
        if message is not None:
            return message
    return None


@pytest.fixture
def broker(settings: Settings, db: object) -> dramatiq.Broker:
    broker = create_broker(settings)
    broker.declare_queue(QUEUE)
    return broker


def test_requeue_while_redis_is_down_is_a_connection_error(broker, redis_server: RedisServer) -> None:
    """Dramatiq's consumer thread survives ConnectionClosed on close; a bare redis error killed it."""
    broker.enqueue(dramatiq.Message(queue_name=QUEUE, actor_name="a", args=(), kwargs={}, options={}))
    consumer = broker.consume(QUEUE, prefetch=1, timeout=50)
    message = next_message(consumer)
    assert message is not None
    redis_server.stop()
    try:
        with pytest.raises(ConnectionClosed):
            consumer.requeue([message])
        with pytest.raises(ConnectionClosed):
            broker.consume(QUEUE, prefetch=1, timeout=50)
    finally:
        redis_server.start()
