"""POST /v1/resend_verify_email: one answer for every address, limits kept in PostgreSQL, no double sends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.app import create_app
from services.api.resend import resend_verify_email
from shared.database import create_engine, create_sessionmaker, outbox, users, verify_email_resends
from shared.messages import SendVerifyEmail
from shared.settings import Settings
from tests.support import resends_done, signup_body, wait_for

ADDRESS = "alice@example.com"


@pytest.fixture
def resend_settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, resend_min_interval_s=60, resend_max_per_day=5)


@pytest.fixture
async def client(resend_settings: Settings, db: AsyncEngine) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(create_app(resend_settings)) as client:
        yield client


async def sign_up(client: AsyncTestClient[Any], db: AsyncEngine, *, minutes_ago: int = 10) -> None:
    """A user whose signup email left ``minutes_ago`` (outside the per-minute limit by default)."""
    response = await client.post("/v1/create_user", json=signup_body(email=ADDRESS))
    assert response.status_code == 200, response.text
    await age(db, users.c.created_at, minutes_ago * 60)


async def age(db: AsyncEngine, column: sa.Column[Any], seconds: int) -> None:
    async with db.begin() as connection:
        await connection.execute(
            column.table.update().values({column.name: column - sa.text(f"interval '{seconds} seconds'")})
        )


async def resend(client: AsyncTestClient[Any], email: str = ADDRESS) -> Any:
    """The request, and the use case it queued, which runs after its answer."""
    response = await client.post("/v1/resend_verify_email", json={"email": email})
    await resends_done(client)
    return response


async def resend_events(db: AsyncEngine) -> list[Any]:
    """Outbox rows of resends: every send_verify_email row after the signup's."""
    async with db.connect() as connection:
        rows = (await connection.execute(sa.select(outbox).order_by(outbox.c.id))).all()
    return [row for row in rows if row.actor == SendVerifyEmail.actor][1:]


def outcomes(outcome: str) -> float:
    return REGISTRY.get_sample_value("resend_requests_total", {"outcome": outcome}) or 0.0


def comparable(response: Any) -> tuple[int, dict[str, str], bytes]:
    headers = {k: v for k, v in response.headers.items() if k not in ("date", "x-request-id")}
    return response.status_code, headers, response.content


async def test_an_unverified_user_gets_one_event_for_the_worker(client, db) -> None:
    await sign_up(client, db)
    before = outcomes("sent")
    response = await resend(client, "ALICE@Example.com")
    assert (response.status_code, response.json()) == (202, {"status": "accepted"})
    (event,) = await resend_events(db)
    assert msgspec.convert(event.payload, SendVerifyEmail) == SendVerifyEmail(username="alice")
    assert (event.queue, event.trace_id) == (SendVerifyEmail.queue, response.headers["x-request-id"])
    assert outcomes("sent") == before + 1


async def test_every_outcome_answers_byte_for_byte_the_same(client, db, resend_settings) -> None:
    await sign_up(client, db)
    sent = await resend(client)
    rate_limited = await resend(client)
    unknown = await resend(client, "nobody@example.com")
    async with db.begin() as connection:
        await connection.execute(users.update().values(is_email_verified=True))
    verified = await resend(client)
    answers = [comparable(response) for response in (sent, rate_limited, unknown, verified)]
    assert answers[0][0] == 202 and all(answer == answers[0] for answer in answers)
    assert len(await resend_events(db)) == 1


async def test_twenty_concurrent_requests_queue_exactly_one_email(client, db, resend_settings) -> None:
    await sign_up(client, db)
    # The use case itself, 20 times at once: the test client runs one request at a time. The user's row is
    # held while they arrive, so that all 20 are in flight together when it is released (unheld, each
    # would finish before the next began, and the test would prove nothing).
    engine = create_engine(resend_settings.database_url)  # 20 connections, as one API process has
    sessions = create_sessionmaker(engine)
    async with db.connect() as holder:
        await holder.execute(sa.select(users).with_for_update())
        requests = [
            asyncio.create_task(
                resend_verify_email(sessions, email=ADDRESS, settings=resend_settings, trace_id=None)
            )
            for _ in range(20)
        ]
        await wait_for(lambda: waiting_on_locks(db, 20), timeout=10, what="20 requests waiting on the row")
        await holder.commit()
        outcomes = await asyncio.gather(*requests)
    await engine.dispose()
    assert sorted(outcomes) == ["rate_limited"] * 19 + ["sent"]
    assert len(await resend_events(db)) == 1


async def waiting_on_locks(db: AsyncEngine, count: int) -> bool:
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    async with db.connect() as connection:
        return bool((await connection.execute(query)).scalar_one() == count)


async def test_one_email_per_interval_counting_the_signups(client, db) -> None:
    await sign_up(client, db, minutes_ago=0)
    await resend(client)
    assert await resend_events(db) == []  # the signup's email left less than a minute ago
    await age(db, users.c.created_at, 61)
    await resend(client)
    await resend(client)
    assert len(await resend_events(db)) == 1
    await age(db, verify_email_resends.c.requested_at, 61)
    await resend(client)
    assert len(await resend_events(db)) == 2


async def test_at_most_max_per_day(client, db, resend_settings) -> None:
    await sign_up(client, db)
    for _ in range(resend_settings.resend_max_per_day + 2):
        await resend(client)
        await age(db, verify_email_resends.c.requested_at, 61)
    assert len(await resend_events(db)) == resend_settings.resend_max_per_day
    await age(db, verify_email_resends.c.requested_at, 24 * 3600)
    await resend(client)
    assert len(await resend_events(db)) == resend_settings.resend_max_per_day + 1


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "email"), ({"email": "nope"}, "email"), ({"email": ADDRESS, "x": 1}, "x"), ([], "body")],
)
async def test_a_bad_body_is_400_per_field(client, db, body, field) -> None:
    response = await client.post("/v1/resend_verify_email", json=body)
    assert response.status_code == 400
    assert [entry["field"] for entry in response.json()["fields"]] == [field]


async def test_a_large_body_is_413(client, db, resend_settings) -> None:
    response = await resend(client, "a" * resend_settings.api_max_body_bytes + "@example.com")
    assert response.status_code == 413


async def test_every_outcome_runs_the_same_statements(client, db) -> None:
    """Timing that tells no one who exists: the database sees the same statements whatever the address."""
    await sign_up(client, db)
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = client.app.state.resend_engine.sync_engine
    seen = []
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        for address in (ADDRESS, ADDRESS, "nobody@example.com"):  # sent, rate limited, unknown
            statements.clear()
            await resend(client, address)
            seen.append(list(statements))
        async with db.begin() as connection:
            await connection.execute(users.update().values(is_email_verified=True))
        statements.clear()
        await resend(client)
        seen.append(list(statements))
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert len(seen[0]) >= 2 and all(run == seen[0] for run in seen)


async def test_a_resend_that_meets_a_connection_postgresql_closed_runs_again(client, db) -> None:
    # The resends' pool checks no connection out with a ping: one whose server process has gone fails its
    # first statement, and the resend queue runs the request again on a fresh one.
    await sign_up(client, db)
    await resend(client, "nobody@example.com")  # leaves a connection in the resends' pool
    async with db.connect() as connection:
        await connection.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    assert (await resend(client)).status_code == 202
    assert len(await resend_events(db)) == 1
