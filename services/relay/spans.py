"""The relay's span: one PRODUCER span per published batch, linked to the trace of every row in it.

A batch holds many signups' rows, so it cannot be the child of any one of them; OpenTelemetry's messaging
conventions link a batch's "send" span to each message's creation context instead. A row written before
its trace context was stored (or with tracing off in the API) simply has no link.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind

from services.relay.store import OutboxRow
from shared.telemetry import MESSAGING_SYSTEM, context_from, tracer


def publish_span(rows: list[OutboxRow]) -> AbstractContextManager[Span]:
    """A current PRODUCER span named ``send <queue>`` for ``rows``; it records an exception raised in it."""
    queues = sorted({row.queue for row in rows})
    attributes: dict[str, str | int] = {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.batch.message_count": len(rows),
    }
    if len(queues) == 1:
        attributes["messaging.destination.name"] = queues[0]
    if len(rows) == 1:
        attributes["messaging.message.id"] = str(rows[0].event_id)
    return tracer().start_as_current_span(
        f"send {queues[0]}" if len(queues) == 1 else "send",
        kind=SpanKind.PRODUCER,
        links=_links(rows),
        attributes=attributes,
    )


def _links(rows: list[OutboxRow]) -> list[Link]:
    links = []
    for row in rows:
        context = context_from(row.trace_context)
        if context is not None:
            span_context = trace.get_current_span(context).get_span_context()
            links.append(Link(span_context, {"messaging.message.id": str(row.event_id)}))
    return links
