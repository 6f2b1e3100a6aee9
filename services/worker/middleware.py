"""Worker middleware: log context and a span per message, and what happens to a failed message."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import redis
import structlog
from dramatiq import Broker, Middleware
from dramatiq.broker import MessageProxy
from dramatiq.middleware import CurrentMessage
from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.worker.metrics import WorkerMetrics
from shared.broker import StreamsBroker
from shared.logging import get_logger
from shared.telemetry import MESSAGING_SYSTEM, context_from, tracer

log = get_logger()


class MessageContext(Middleware):
    """Binds ``request_id`` (option ``trace_id``), ``message_id`` and ``event_id`` to a message's log lines.

    They are cleared after the ack or nack, so Dramatiq's own lines about a retry carry them too.
    """

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=message.options.get("trace_id"),
            message_id=message.message_id,
            event_id=message.message_id,
        )

    def after_ack(self, broker: Broker, message: MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()


class MessageSpans(Middleware):
    """A CONSUMER span per delivery, the child of the context the outbox row stored (DESIGN §12).

    Each attempt is a span of its own, so retries show as siblings in the signup's trace; a message from
    a row without context starts a new trace. Must sit before ``Retries`` in the middleware list: after-hooks
    run in reverse, so ``after_process_message`` then sees whether Retries gave up (a dead letter).
    Before- and after-hooks of one message run on the same worker thread, where the context is attached.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        span = tracer().start_span(
            f"process {message.queue_name}",
            context=context_from(message.options.get("trace_context")),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": MESSAGING_SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": message.queue_name,
                "messaging.message.id": message.message_id,
                "messaging.dramatiq.actor": message.actor_name,
                "messaging.dramatiq.retries": message.options.get("retries", 0),
            },
        )
        token = context.attach(trace.set_span_in_context(span))
        self._local.current = (span, token)

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: Any = None, exception: Any = None
    ) -> None:
        current = self._end()
        if current is None:
            return
        if exception is not None:
            current.record_exception(exception)
            current.set_status(Status(StatusCode.ERROR, type(exception).__name__))
        if message.failed:
            current.add_event(
                "message dead-lettered", {"messaging.dramatiq.retries": message.options.get("retries", 0)}
            )
        current.end()

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        current = self._end()
        if current is not None:
            current.end()

    def _end(self) -> trace.Span | None:
        span, token = getattr(self._local, "current", (None, None))
        self._local.current = (None, None)
        if token is not None:
            context.detach(token)
        return span


class FailureObserver(Middleware):
    """Counts retries and dead letters (metrics, and the console's per-minute tallies), and keeps the last
    error in the message's options, where the retry and the dead letter carry it (``signup dlq list``)."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: Any = None, exception: Any = None
    ) -> None:
        if exception is not None:
            # Runs before Retries (after-hooks run in reverse), which copies this option into the retry.
            message.options["last_error"] = _describe(exception)
            log.warning("attempt failed", error=message.options["last_error"])

    def after_enqueue(self, broker: Broker, message: Any, delay: int | None) -> None:
        current = CurrentMessage.get_current_message()
        if current is not None and current.message_id == message.message_id:
            self.metrics.retries.labels(message=message.actor_name).inc()
            _tally(broker, "retries")

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        self.metrics.dead_letters.labels(message=message.actor_name).inc()
        _tally(broker, "dead_letters")
        error = message.options.get("last_error", "unknown")
        log.error("message dead-lettered", error=error, retries=message.options.get("retries", 0))


def _tally(broker: Broker, kind: str) -> None:
    """Count one ``kind`` in this minute's tally, for the operator console's chart (best effort: a chart
    is not worth failing a message for)."""
    if isinstance(broker, StreamsBroker):
        with contextlib.suppress(redis.RedisError):
            broker.tally(kind)


def _describe(exception: BaseException) -> str:
    return f"{type(exception).__name__}: {exception}"[:300]
