"""The operator console on the real PostgreSQL and Redis: who gets in, which posts act, and what a replay or
a discard of a dead letter does (the event's timeline and the log name the operator)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from services.admin.app import create_console
from services.admin.render import CSP
from shared.broker import StreamsBroker, create_broker
from shared.database import outbox, users
from shared.settings import Settings
from signup_cli.trace import timeline
from tests.support import signup_cli

PASSWORD = "correct horse battery staple"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def console_settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings, console_operators=f"alice:{PASSWORD},bob:another long password", console_cookie_secure=False
    )


@pytest.fixture
async def console(console_settings: Settings, db: AsyncEngine) -> AsyncIterator[AsyncTestClient[Any]]:
    app = create_console(console_settings)
    assert app is not None
    async with AsyncTestClient(app) as client:
        yield client


@pytest.fixture
def broker(settings: Settings) -> Any:
    broker = create_broker(settings)
    yield broker
    broker.close()


async def log_in(client: AsyncTestClient[Any], name: str = "alice", password: str = PASSWORD) -> Any:
    form = await client.get("/login")
    token = CSRF.search(form.text)
    assert token, form.text
    return await client.post("/login", data={"csrf": token.group(1), "name": name, "password": password})


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, html
    return found.group(1)


async def dead_letter(engine: AsyncEngine, broker: StreamsBroker, username: str = "carol") -> str:
    """A signup whose email was dead-lettered (its outbox row handled, as the worker marks it)."""
    event_id = uuid.uuid4()
    async with engine.begin() as connection:
        await connection.execute(
            users.insert().values(
                username=username, hashed_password="x", full_name="C", email=f"{username}@example.com"
            )
        )
        await connection.execute(
            outbox.insert().values(
                event_id=event_id,
                actor="send_verify_email",
                queue="critical",
                payload={"username": username},
                trace_id="req-console-1",
                published_at=sa.func.now(),
                handled_at=sa.func.now(),
            )
        )
    from dramatiq import Message

    message: Message[Any] = Message(
        queue_name="critical",
        actor_name="send_verify_email",
        args=({"username": username},),
        kwargs={},
        options={"trace_id": "req-console-1"},
        message_id=str(event_id),
    )
    broker.enqueue(message)
    consumer = broker.consume("critical", timeout=100)
    try:
        delivered = None
        while delivered is None:
            delivered = next(consumer)
        delivered.options["last_error"] = "SMTPRecipientsRefused: 550 mailbox unavailable"
        consumer.nack(delivered)
    finally:
        consumer.close()
    (letter,) = broker.dead_letters()
    return letter.entry_id


async def handled_at(engine: AsyncEngine, event_id: str) -> Any:
    async with engine.connect() as connection:
        return (
            await connection.execute(sa.select(outbox.c.handled_at).where(outbox.c.event_id == event_id))
        ).scalar_one()


def test_the_console_is_off_without_an_operator(settings: Settings) -> None:
    assert settings.console_operators == ""
    assert create_console(settings) is None


async def test_pages_need_a_login_and_a_wrong_password_gets_none(console) -> None:
    response = await console.get("/dead-letters", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login"
    refused = await log_in(console, password="correct horse battery stapl")
    assert refused.status_code == 401 and "console_session" not in refused.cookies
    refused = await log_in(console, name="mallory")
    assert refused.status_code == 401
    assert (await console.get("/", follow_redirects=False)).status_code == 303


async def test_five_failed_logins_in_a_minute_get_429_even_with_the_right_password(console) -> None:
    for _ in range(5):
        assert (await log_in(console, password="wrong password, sixteen+")).status_code == 401
    limited = await log_in(console)
    assert limited.status_code == 429 and "console_session" not in limited.cookies
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    # The same client with another name: the limit per client address holds.
    assert (await log_in(console, name="bob")).status_code == 429


async def test_a_login_opens_the_pages_under_a_strict_csp(console) -> None:
    response = await log_in(console)
    assert response.status_code == 200 and "Overview" in response.text
    for path in ("/", "/dead-letters", "/signups", "/unhandled", "/signup?q=nobody", "/login"):
        page = await console.get(path)
        assert page.status_code == 200, (path, page.text)
        assert page.headers["content-security-policy"] == CSP
        assert "<script" not in page.text
    assert "script-src" not in CSP and "'unsafe-inline'" not in CSP


async def test_a_login_post_without_its_form_token_is_refused(console) -> None:
    await console.get("/login")
    response = await console.post("/login", data={"name": "alice", "password": PASSWORD})
    assert response.status_code == 403
    assert (await console.get("/", follow_redirects=False)).status_code == 303


async def test_replay_from_the_console_requeues_reopens_and_records_the_operator(
    console, console_settings, broker, db, log_tee
) -> None:
    entry_id = await dead_letter(db, broker)
    (letter,) = broker.dead_letters()
    event_id = letter.message.message_id
    await log_in(console)
    listed = await console.get("/dead-letters")
    assert event_id in listed.text and "SMTPRecipientsRefused" in listed.text and "carol" in listed.text
    page = await console.get(f"/dead-letters/{entry_id}")
    assert page.status_code == 200 and "req-console-1" in page.text

    replayed = await console.post(f"/dead-letters/{entry_id}/replay", data={"csrf": csrf_of(page.text)})
    assert replayed.status_code == 200 and "Replayed" in replayed.text, replayed.text
    assert broker.dead_letters() == []
    assert [m.message_id for m in broker.messages("critical")] == [event_id]
    assert await handled_at(db, event_id) is None  # reconciliation watches the replay
    steps, _ = await timeline(console_settings, "carol") or ([], [])
    assert any(f"dead letter replayed by alice  event_id={event_id}" in what for _, what in steps)
    assert any('"operator": "alice"' in line and "dead letter replayed" in line for line in log_tee.lines)
    again = await console.post(f"/dead-letters/{entry_id}/replay", data={"csrf": csrf_of(page.text)})
    assert "gone" in again.text and len(broker.messages("critical")) == 1


async def test_an_action_without_the_sessions_token_or_from_another_site_is_refused(
    console, broker, db
) -> None:
    entry_id = await dead_letter(db, broker)
    await log_in(console)
    page = await console.get(f"/dead-letters/{entry_id}")
    token = csrf_of(page.text)
    for data, headers in (
        ({}, {}),
        ({"csrf": "x" * 43}, {}),
        ({"csrf": token}, {"Sec-Fetch-Site": "cross-site"}),
        ({"csrf": token}, {"Origin": "http://evil.example"}),
    ):
        response = await console.post(f"/dead-letters/{entry_id}/replay", data=data, headers=headers)
        assert response.status_code == 403, (data, headers)
    # A token from alice's session is worth nothing in another session. The same client, its cookies
    # cleared: a second client of the same app would run it on a second event loop, and the app's pooled
    # database connections belong to the loop that opened them.
    console.cookies.clear()
    await log_in(console, name="bob", password="another long password")
    response = await console.post(f"/dead-letters/{entry_id}/replay", data={"csrf": token})
    assert response.status_code == 403
    assert len(broker.dead_letters()) == 1


async def test_discard_needs_a_confirmation_then_removes_the_letter_and_its_locator(
    console, console_settings, broker, db
) -> None:
    entry_id = await dead_letter(db, broker)
    (letter,) = broker.dead_letters()
    event_id = letter.message.message_id
    await log_in(console)
    confirm = await console.get(f"/dead-letters/{entry_id}/discard")
    assert "for good" in confirm.text
    unconfirmed = await console.post(
        f"/dead-letters/{entry_id}/discard", data={"csrf": csrf_of(confirm.text)}, follow_redirects=False
    )
    assert unconfirmed.status_code == 303 and len(broker.dead_letters()) == 1
    done = await console.post(
        f"/dead-letters/{entry_id}/discard", data={"csrf": csrf_of(confirm.text), "confirm": "yes"}
    )
    assert done.status_code == 200 and "Discarded" in done.text
    assert broker.dead_letters() == [] and broker.locate([event_id]) == [False]
    assert not broker.client.hexists(broker.locators_key, event_id)
    assert await handled_at(db, event_id) is not None  # reconciliation leaves it alone
    steps, _ = await timeline(console_settings, "carol") or ([], [])
    assert any("dead letter discarded by alice" in what for _, what in steps)


async def test_signup_dlq_discard_takes_the_same_path(console_settings, broker, db) -> None:
    await dead_letter(db, broker)
    (letter,) = broker.dead_letters()
    done = signup_cli(console_settings, "dlq", "discard", letter.message.message_id)
    assert done.returncode == 0 and f"discarded {letter.message.message_id}" in done.stdout, done.stderr
    assert broker.dead_letters() == []
    steps, _ = await timeline(console_settings, "carol") or ([], [])
    assert any("dead letter discarded by cli" in what for _, what in steps)


async def test_the_signup_page_finds_a_signup_by_username_email_or_request_id(console, broker, db) -> None:
    await dead_letter(db, broker)
    await log_in(console)
    for query in ("carol", "CAROL@example.com", "req-console-1"):
        page = await console.get("/signup", params={"q": query})
        assert "Signup of carol" in page.text and "outbox send_verify_email created" in page.text, query


async def test_the_overview_counts_what_happened_in_the_last_hour(console, broker, db) -> None:
    await dead_letter(db, broker)  # a user, an unhandled-then-handled event, a dead letter
    async with db.begin() as connection:
        await connection.execute(
            outbox.insert().values(
                event_id=uuid.uuid4(), actor="send_verify_email", queue="critical", payload={"username": "x"}
            )
        )  # one unpublished row: the backlog
    broker.tally("retries", 3)
    broker.tally("dead_letters")
    broker.announce("relay")
    await log_in(console)
    page = (await console.get("/")).text
    assert 'http-equiv="refresh"' in page
    assert '<b id="total-signups">1</b>' in page
    assert '<b id="total-retries">3</b>' in page and '<b id="total-dead-letters">1</b>' in page
    assert '<b id="backlog">1</b>' in page and '<b id="unhandled">0</b>' in page
    assert re.search(r'<b id="dead"><a href="/dead-letters">1</a></b>', page)
    assert broker.broker_id in page and "relay" in page and ">alive<" in page
