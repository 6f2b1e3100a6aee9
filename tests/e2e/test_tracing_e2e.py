"""End to end: api, relay and worker as real processes print one signup's trace with the console exporter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.settings import Settings
from tests.support import Services, SmtpSink, ready, signup_body, wait_for


@pytest.fixture
def traced(settings: Settings, sink: SmtpSink, db: Any, tmp_path: Path) -> Iterator[Services]:
    stack = Services(settings, sink, tmp_path)
    # One span per line on stderr (the log file), exported every 100 ms instead of every 5 s.
    stack.env.update(OTEL_TRACES_EXPORTER="console", OTEL_BSP_SCHEDULE_DELAY="100")
    try:
        for name in ("api", "relay", "worker"):
            stack.start(name)
        yield stack
    finally:
        stack.stop()


def spans(stack: Services, name: str) -> list[dict[str, Any]]:
    """The spans ``name`` printed (JSON lines with a span context; the others are log lines)."""
    return [line for line in stack.logs(name) if "context" in line and "span_id" in line["context"]]


def in_trace(span: dict[str, Any], trace_id: str) -> bool:
    linked = {link["context"]["trace_id"] for link in span.get("links", [])}
    return trace_id in {span["context"]["trace_id"], *linked}


async def test_each_service_prints_spans_of_the_signups_trace(traced: Services, settings: Settings) -> None:
    await ready(traced, settings)
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            f"{traced.api_url}/v1/create_user", json=signup_body(), headers={"X-Request-ID": "otel-e2e"}
        )
    assert response.status_code == 200, response.text

    async def request_line() -> list[dict[str, Any]]:
        # Written once the answer has been sent: poll for it.
        return [
            line
            for line in traced.logs("api")
            if (line.get("event"), line.get("request_id")) == ("request", "otel-e2e")
        ]

    [request] = await wait_for(request_line, timeout=10, what="the request's log line")
    trace_id = "0x" + request["trace_id"]  # the console exporter prints ids as 0x-prefixed hex

    expected = {
        "api": {"POST /v1/create_user"},
        "relay": {"send critical"},
        "worker": {"process critical", "smtp send"},
    }

    async def every_service_printed_it() -> dict[str, list[dict[str, Any]]]:
        found = {
            name: [span for span in spans(traced, name) if in_trace(span, trace_id)] for name in expected
        }
        printed = all(names <= {span["name"] for span in found[name]} for name, names in expected.items())
        return found if printed else {}

    found = await wait_for(every_service_printed_it, timeout=30, what="the signup's spans in every service")
    # The relay's batch is a trace of its own, linked to the signup's: it is found through its link.
    [publish] = found["relay"]
    assert publish["context"]["trace_id"] != trace_id and publish["kind"] == "SpanKind.PRODUCER"
    for name, printed in found.items():
        assert {span["resource"]["attributes"]["service.name"] for span in printed} == {f"signup-{name}"}
