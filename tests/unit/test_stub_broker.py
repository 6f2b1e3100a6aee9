"""The worker's middleware and the relay's plain enqueue loop on Dramatiq's StubBroker: no Redis needed.

What only Redis can show (acks, the pipelined batch, heartbeats) stays in the integration tests; here a real
``dramatiq.Worker`` runs real actors on the stub, as Dramatiq's own tests do.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import structlog
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage, Retries

from services.relay.publisher import enqueue_batch
from services.relay.store import OutboxRow
from services.worker.errors import PermanentError, TransientError
from services.worker.metrics import WorkerMetrics
from services.worker.middleware import FailureObserver, MessageContext


@pytest.fixture
def metrics() -> WorkerMetrics:
    return WorkerMetrics()


@pytest.fixture
def stub_broker(metrics: WorkerMetrics) -> Iterator[StubBroker]:
    broker = StubBroker(middleware=[CurrentMessage(), Retries(max_retries=1, min_backoff=1, max_backoff=1)])
    broker.add_middleware(MessageContext())
    broker.add_middleware(FailureObserver(metrics))
    broker.emit_after("process_boot")
    yield broker
    broker.flush_all()
    broker.close()


@pytest.fixture
def stub_worker(stub_broker: StubBroker) -> Iterator[Worker]:
    worker = Worker(stub_broker, worker_timeout=10, worker_threads=1)
    worker.start()
    yield worker
    worker.stop()


def count(counter: Any, message: str) -> float:
    return float(counter.labels(message=message)._value.get())


def test_each_message_logs_with_its_own_ids_and_none_leak_to_the_next(stub_broker, stub_worker) -> None:
    seen: list[dict[str, Any]] = []

    def record() -> None:
        seen.append(dict(structlog.contextvars.get_contextvars()))

    actor = dramatiq.Actor(
        record, broker=stub_broker, actor_name="record", queue_name="q", priority=0, options={}
    )
    first = actor.send_with_options(trace_id="req-1")
    second = actor.send_with_options()
    stub_broker.join("q")
    stub_worker.join()

    assert seen[0] == {"request_id": "req-1", "message_id": first.message_id, "event_id": first.message_id}
    assert seen[1]["request_id"] is None and seen[1]["message_id"] == second.message_id
    assert structlog.contextvars.get_contextvars() == {}


def test_a_transient_failure_is_counted_as_a_retry_then_a_dead_letter(
    stub_broker, stub_worker, metrics
) -> None:
    def flaky() -> None:
        raise TransientError("SMTP deferred the message with 451")

    actor = dramatiq.Actor(
        flaky, broker=stub_broker, actor_name="flaky", queue_name="q", priority=0, options={}
    )
    actor.send()
    stub_broker.join("q", fail_fast=False)
    stub_worker.join()

    assert count(metrics.retries, "flaky") == 1 and count(metrics.dead_letters, "flaky") == 1
    (dead,) = stub_broker.dead_letters
    assert dead.options["last_error"] == "TransientError: SMTP deferred the message with 451"


def test_a_permanent_failure_is_dead_lettered_without_a_retry(stub_broker, stub_worker, metrics) -> None:
    def refused() -> None:
        raise PermanentError("SMTP rejected the message with 550")

    actor = dramatiq.Actor(
        refused,
        broker=stub_broker,
        actor_name="refused",
        queue_name="q",
        priority=0,
        options={"throws": (PermanentError,)},
    )
    actor.send()
    stub_broker.join("q", fail_fast=False)
    stub_worker.join()

    assert count(metrics.retries, "refused") == 0 and count(metrics.dead_letters, "refused") == 1


def test_the_relay_enqueues_one_by_one_on_a_broker_without_pipelines(stub_broker) -> None:
    due, later = (
        OutboxRow(
            id=n,
            event_id=uuid.uuid4(),
            actor="send_verify_email",
            queue="critical",
            payload={"username": f"u{n}"},
            trace_id=f"req-{n}",
            delay_ms=delay,
        )
        for n, delay in ((1, None), (2, 5_000))
    )
    stub_broker.declare_queue("critical")
    enqueue_batch(stub_broker, [due, later])

    (now,) = [dramatiq.Message.decode(body) for body in stub_broker.queues["critical"].queue]
    (delayed,) = [dramatiq.Message.decode(body) for body in stub_broker.queues["critical.DQ"].queue]
    assert (now.message_id, now.args, now.options["trace_id"]) == (
        str(due.event_id),
        ({"username": "u1"},),
        "req-1",
    )
    assert delayed.message_id == str(later.event_id) and delayed.options["eta"] > 0
