"""One trace per signup: the real API, relay and worker in this process, spans in memory (DESIGN §12)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from shared.settings import Settings
from tests.support import (
    LogTee,
    SmtpSink,
    add_rows,
    add_user,
    fetch,
    finished,
    logged,
    named,
    running_relay,
    running_worker,
    signup_body,
)


@pytest.fixture
def traced_settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, worker_min_backoff_ms=100, worker_max_backoff_ms=500)


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent else None


async def sign_up(client, request_id: str) -> None:
    response = await client.post("/v1/create_user", json=signup_body(), headers={"X-Request-ID": request_id})
    assert response.status_code == 200, response.text


async def test_one_trace_from_the_request_through_the_outbox_to_the_smtp_reply(
    spans, client, traced_settings, sink: SmtpSink, log_tee: LogTee
) -> None:
    start = len(log_tee.lines)
    async with running_relay(traced_settings):
        with running_worker(traced_settings):
            await sign_up(client, "otel-1")
            done = await finished(spans, "smtp send")
            done = await finished(spans, "process critical")
    [http] = named(done, "POST /v1/create_user")
    [publish] = named(done, "send critical")
    [consume] = named(done, "process critical")
    [smtp] = named(done, "smtp send")
    [(event_id,)] = await fetch(traced_settings, "SELECT event_id::text FROM outbox")
    signup = http.context.trace_id
    assert http.kind == SpanKind.SERVER and attrs(http)["signup.request_id"] == "otel-1"
    sql = [span for span in done if attrs(span).get("db.system") == "postgresql"]
    inserts = [span for span in sql if "INSERT INTO outbox" in str(attrs(span).get("db.statement"))]
    assert inserts and {span.context.trace_id for span in inserts} == {signup}
    assert {parent_id(span) for span in inserts} == {http.context.span_id}
    # The relay's batch is a trace of its own, linked to the signup's span.
    assert publish.kind == SpanKind.PRODUCER and publish.context.trace_id != signup
    assert [(link.context.trace_id, link.context.span_id) for link in publish.links] == [
        (signup, http.context.span_id)
    ]
    assert publish.links[0].attributes == {"messaging.message.id": event_id}
    assert {
        "messaging.system": "dramatiq",
        "messaging.destination.name": "critical",
        "messaging.message.id": event_id,
    }.items() <= attrs(publish).items()
    # The worker continues the signup's trace: consume is the child of the request, SMTP of consume.
    assert consume.kind == SpanKind.CONSUMER and consume.context.trace_id == signup
    assert parent_id(consume) == http.context.span_id
    assert {
        "messaging.system": "dramatiq",
        "messaging.destination.name": "critical",
        "messaging.message.id": event_id,
    }.items() <= attrs(consume).items()
    assert smtp.kind == SpanKind.CLIENT and parent_id(smtp) == consume.context.span_id
    worker_sql = [span for span in sql if span.context.trace_id == signup and span not in inserts]
    assert any(parent_id(span) == consume.context.span_id for span in worker_sql)
    # Log lines written inside a span carry its ids, in OpenTelemetry's hex form, beside the request id.
    [request_line] = [
        line for line in logged(log_tee, "request", since=start) if line["request_id"] == "otel-1"
    ]
    [sent_line] = logged(log_tee, "verification email sent", since=start)
    assert (request_line["trace_id"], request_line["span_id"]) == (
        f"{signup:032x}",
        f"{http.context.span_id:016x}",
    )
    assert (sent_line["trace_id"], sent_line["span_id"]) == (
        f"{signup:032x}",
        f"{consume.context.span_id:016x}",
    )
    assert sent_line["request_id"] == "otel-1"


async def test_a_retry_adds_spans_to_the_same_trace_and_a_dead_letter_is_an_event(
    spans, client, db, traced_settings, sink: SmtpSink
) -> None:
    sink.script.append("451 4.3.0 try again")
    async with running_relay(traced_settings):
        with running_worker(traced_settings):
            await sign_up(client, "otel-2")
            done = await finished(spans, "process critical", count=2)
            assert len(sink.received) == 1
    [http] = named(done, "POST /v1/create_user")
    first, second = sorted(named(done, "process critical"), key=lambda span: span.start_time or 0)
    for attempt in (first, second):
        assert attempt.context.trace_id == http.context.trace_id
        assert parent_id(attempt) == http.context.span_id
    assert first.status.status_code == StatusCode.ERROR and attrs(first)["messaging.dramatiq.retries"] == 0
    assert second.status.status_code == StatusCode.UNSET and attrs(second)["messaging.dramatiq.retries"] == 1
    assert [event.name for event in first.events] == ["exception"]

    spans.clear()
    await add_user(db, "user_1")
    sink.script.append("550 5.1.1 mailbox unavailable")  # permanent: dead-lettered at once
    async with running_relay(traced_settings):
        with running_worker(traced_settings):
            await add_rows(traced_settings, 1)
            done = await finished(spans, "process critical")
    [dead] = named(done, "process critical")
    assert "message dead-lettered" in [event.name for event in dead.events]


async def test_a_row_without_trace_context_publishes_and_starts_a_new_trace(
    spans, db, traced_settings, sink: SmtpSink
) -> None:
    await add_user(db, "user_1")
    async with running_relay(traced_settings):
        with running_worker(traced_settings):
            [event_id] = await add_rows(traced_settings, 1)  # written as before the migration: no context
            done = await finished(spans, "smtp send")
            done = await finished(spans, "process critical")
    [publish] = named(done, "send critical")
    [consume] = named(done, "process critical")
    [smtp] = named(done, "smtp send")
    assert not publish.links
    assert consume.parent is None and attrs(consume)["messaging.message.id"] == event_id
    assert consume.context.trace_id != publish.context.trace_id
    assert smtp.context.trace_id == consume.context.trace_id


async def test_probes_start_no_trace(spans, client) -> None:
    """A readiness probe runs SQL; a trace per probe would bury the signups'."""
    for path in ("/readyz", "/healthz"):
        assert (await client.get(path)).status_code == 200
    await sign_up(client, "otel-after-probes")  # a traced request after them: spans are being recorded
    done = await finished(spans, "POST /v1/create_user")
    assert {span.context.trace_id for span in done} == {
        named(done, "POST /v1/create_user")[0].context.trace_id
    }
