"""End to end: api, relay and worker as real processes; 200 signups → 200 emails → 200 verifications.

Also checks that one signup's log lines in all three services share its trace id at ``LOG_LEVEL=info``
(with a retry and a dead letter too), and that ``signup trace`` shows each step of it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from shared.database import outbox, verify_emails
from shared.settings import Settings
from tests.support import Services, SmtpSink, link_of, nothing_pending, ready, run_signup, wait_for

USERS = 200


@pytest.fixture
def services(settings: Settings, sink: SmtpSink, db: Any, tmp_path: Path) -> Iterator[Services]:
    stack = Services(settings, sink, tmp_path)
    try:
        for name in ("api", "relay", "worker"):
            stack.start(name)
        yield stack
    finally:
        stack.stop()


def events_of(stack: Services, service: str, request_id: str) -> list[str]:
    """The ``event`` of every line of ``service``'s log that carries the request id ``request_id``."""
    return [line["event"] for line in stack.logs(service) if line.get("request_id") == request_id]


async def drained(db: Any, settings: Settings) -> bool:
    """Every outbox row is published and handled, and Redis holds no message ready, delayed or unacked."""
    async with db.connect() as connection:
        open_rows = await connection.scalar(
            sa.select(sa.func.count()).select_from(outbox).where(outbox.c.handled_at.is_(None))
        )
        rows = await connection.scalar(sa.select(sa.func.count()).select_from(outbox))
    empty: bool = await asyncio.to_thread(nothing_pending, settings.redis_url)
    return rows == USERS and open_rows == 0 and empty


async def test_two_hundred_signups_two_hundred_emails_each_verified(services, settings, sink, db) -> None:
    await ready(services, settings)
    async with httpx.AsyncClient(base_url=services.api_url, timeout=30) as client:
        for start in range(0, USERS, 20):
            responses = await asyncio.gather(
                *(
                    client.post(
                        "/v1/create_user",
                        json={
                            "username": f"user{i}",
                            "full_name": "Test User",
                            "email": f"user{i}@example.com",
                            "password": "correct horse",
                        },
                        headers={"X-Request-ID": f"trace-{i}"},
                    )
                    for i in range(start, start + 20)
                )
            )
            assert [r.status_code for r in responses] == [200] * 20, responses[0].text

        await wait_for(
            lambda: drained(db, settings), timeout=90, what="every outbox row handled, Redis empty"
        )
        # Drained: every row was handled and Redis holds no message, so no delivery can come after this
        # (reconciliation re-publishes unhandled rows only). A late duplicate has arrived by now.
        recipients = Counter(address for mail in sink.received for address in mail.recipients)
        assert len(sink.received) == USERS and set(recipients.values()) == {1}
        assert len({mail.message_id for mail in sink.received}) == USERS

        links = {mail.recipients[0]: link_of(mail.message) for mail in sink.received}
        expired_link, expired_id = links.pop("user0@example.com")
        async with db.begin() as connection:
            await connection.execute(
                verify_emails.update()
                .where(verify_emails.c.id == expired_id)
                .values(expired_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        assert (await client.get(expired_link)).status_code == 410

        for link, _ in links.values():
            response = await client.get(link)
            assert (response.status_code, response.json()) == (200, {"is_verified": True})
        again = await client.get(links["user1@example.com"][0])
        assert (again.status_code, again.json()) == (200, {"is_verified": True})
        tampered = links["user2@example.com"][0][:-1] + "~"
        assert (await client.get(tampered)).status_code == 404

    # At LOG_LEVEL=info, one line per hop carries the signup's trace id.
    for name, event in (
        ("api", "request"),
        ("relay", "relay.event_published"),
        ("worker", "verification email sent"),
    ):
        assert event in events_of(services, name, "trace-7"), name
    traced = run_signup("trace", "user7", env=services.env, timeout=30)
    assert traced.returncode == 0, traced.stderr
    trace = traced.stdout
    for step in (
        "user created",
        "outbox send_verify_email created",
        "request_id=trace-7",
        "outbox send_verify_email published",
    ):
        assert step in trace, trace
    for step in ("verify email created", "verify email sent", "verified: yes"):
        assert step in trace, trace
    async with db.connect() as connection:
        sent = (
            await connection.execute(sa.select(sa.func.count()).where(verify_emails.c.sent_at.is_not(None)))
        ).scalar_one()
    assert sent == USERS


async def sign_up(stack: Services, username: str, trace_id: str) -> None:
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as client:
        response = await client.post(
            "/v1/create_user",
            json={
                "username": username,
                "full_name": "Алиса Лидделл",
                "email": f"{username}@example.com",
                "password": "correct horse",
            },
            headers={"X-Request-ID": trace_id},
        )
    assert response.status_code == 200, response.text


async def test_a_retried_and_a_dead_lettered_signup_keep_their_trace_id_at_info(services, settings, sink):
    assert services.env["LOG_LEVEL"] == "info"
    await ready(services, settings)
    sink.script.append("451 4.3.0 try again later")
    await sign_up(services, "retried", "trace-retried")

    async def delivered() -> bool:
        return any("retried@example.com" in mail.recipients for mail in sink.snapshot())

    await wait_for(delivered, timeout=30, what="the retried email")
    sink.script.append("550 5.1.1 no such mailbox")
    await sign_up(services, "refused", "trace-refused")

    async def dead_lettered() -> bool:
        return "message dead-lettered" in events_of(services, "worker", "trace-refused")

    await wait_for(dead_lettered, timeout=30, what="the dead letter's log line")

    for trace_id in ("trace-retried", "trace-refused"):
        assert "request" in events_of(services, "api", trace_id)
        assert "relay.event_published" in events_of(services, "relay", trace_id)
    retried = events_of(services, "worker", "trace-retried")
    assert retried.count("attempt failed") == 1 and retried.count("verification email sent") == 1, retried
    refused = events_of(services, "worker", "trace-refused")
    assert "attempt failed" in refused and "verification email sent" not in refused, refused
