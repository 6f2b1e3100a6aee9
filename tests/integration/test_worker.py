"""The email worker on real PostgreSQL, Redis and SMTP: one email per message id, retries, dead letters."""

from __future__ import annotations

import re
from email.message import Message as EmailMessageBase
from typing import Any, TypeVar

import sqlalchemy as sa
from dramatiq import Worker
from sqlalchemy.ext.asyncio import AsyncEngine

from services.worker.wiring import build_broker, warm_up
from shared.database import verify_emails
from shared.keys import code_digest
from signup_cli.trace import load_timeline
from tests.support import (
    SmtpSink,
    add_user,
    logged,
    received,
    running_worker,
    signup_cli,
    verify_message,
    wait_for,
    wait_logged,
)

T = TypeVar("T")


async def sent_rows(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(sa.select(verify_emails))).all())


async def _async(value: T) -> T:
    return value


async def test_one_email_with_a_working_link_and_a_deterministic_message_id(
    worker_settings, db, sink: SmtpSink, log_tee, sensitive
) -> None:
    email = await add_user(db)
    sensitive.append(email)
    message = verify_message()
    with running_worker(worker_settings) as broker:
        broker.enqueue(message)
        mails = await wait_for(lambda: received(sink), timeout=10, what="the email")
    (row,) = await sent_rows(db)
    mail = mails[0]
    assert mail.recipients == (email,) and mail.message_id == f"<{message.message_id}@signup-outbox>"
    text = mail.message.get_payload(0)
    assert isinstance(text, EmailMessageBase)
    body = text.get_payload(decode=True)
    assert isinstance(body, bytes)
    link = re.search(rb"/v1/verify_email\?email_id=(\d+)&secret_code=([A-Za-z0-9_-]+)", body)
    assert link is not None and int(link.group(1)) == row.id
    code = link.group(2).decode()
    sensitive.append(code)
    assert len(code) >= 43
    assert row.code_sha256 == code_digest(code) and code not in str(row)  # the row holds the digest alone
    assert row.sent_at is not None and str(row.event_id) == message.message_id
    (line,) = logged(log_tee, "verification email sent")[-1:]
    assert (line["request_id"], line["message_id"], line["username"]) == (
        "trace-w1",
        message.message_id,
        "alice",
    )


async def test_a_worker_opens_its_database_and_smtp_connections_before_its_first_message(
    worker_settings, db, sink: SmtpSink
) -> None:
    # The first message of a fresh process paid a PostgreSQL connect (with SQLAlchemy's first-connection
    # queries) and an SMTP connect and EHLO on its way to the inbox: after a deploy, and in every process of
    # several. The worker opens both when it boots, and the first message uses them.
    await add_user(db)
    broker, context = build_broker(worker_settings)
    worker = Worker(broker, worker_timeout=50, worker_threads=worker_settings.worker_threads)
    worker.start()
    try:
        pool = context.engine.pool
        await wait_for(
            lambda: _async((sink.sessions == 1 and pool.checkedin() == 1) or None),  # type: ignore[attr-defined]
            timeout=10,
            what="a pooled database connection and an SMTP session before any message",
        )
        broker.enqueue(verify_message())
        await wait_for(lambda: received(sink), timeout=10, what="the email")
        assert sink.sessions == 1
        assert pool.checkedin() + pool.checkedout() == 1  # type: ignore[attr-defined]
    finally:
        worker.stop()
        broker.close()


async def test_the_warm_up_prepares_a_messages_statements_on_the_pooled_connection_and_writes_nothing(
    worker_settings, db, sink: SmtpSink
) -> None:
    # A fresh process's first message also paid for SQLAlchemy compiling, and asyncpg preparing, each of
    # its statements on the connection (a few ms). The warm-up runs them for no row and rolls back.
    await add_user(db)
    _broker, context = build_broker(worker_settings)
    try:
        await warm_up(context)
        async with context.engine.connect() as connection:
            prepared = " | ".join(
                (await connection.execute(sa.text("SELECT statement FROM pg_prepared_statements"))).scalars()
            )
    finally:
        await context.engine.dispose()
    for statement in ("INSERT INTO verify_emails", "FOR UPDATE", "UPDATE verify_emails SET"):
        assert statement in prepared, prepared
    assert "UPDATE outbox SET handled_at" in prepared, prepared
    assert await sent_rows(db) == []
    async with db.connect() as connection:
        assert (await connection.execute(sa.select(sa.func.count()).select_from(verify_emails))).scalar() == 0


async def test_the_same_message_twice_sends_one_email(worker_settings, db, sink, log_tee) -> None:
    start = len(log_tee.lines)
    await add_user(db)
    message = verify_message()
    with running_worker(worker_settings) as broker:
        # Both copies wait in the queue before the worker's two threads start: they race for real.
        broker.enqueue(message)
        broker.enqueue(message)
        await wait_for(lambda: received(sink), timeout=10, what="the email")
        await wait_logged(log_tee, "duplicate delivery; email already sent", since=start)
    assert len(sink.received) == 1 and len(await sent_rows(db)) == 1


async def test_a_connection_that_died_in_the_pool_costs_no_failed_attempt(
    worker_settings, db, sink, log_tee
) -> None:
    # The worker's pool lends connections without a ping (DESIGN §5): one that PostgreSQL closed while it was
    # pooled fails the message's first statement, and the actor handles the message again at once.
    start = len(log_tee.lines)
    await add_user(db, "alice")
    await add_user(db, "bob")
    with running_worker(worker_settings) as broker:
        broker.enqueue(verify_message("alice"))
        await wait_for(lambda: received(sink), timeout=10, what="the first email")
        async with db.connect() as connection:
            killed = await connection.scalar(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend'"
                )
            )
        assert killed >= 1
        broker.enqueue(verify_message("bob"))
        stale = "stale database connection discarded; handling the message again"
        await wait_logged(log_tee, stale, since=start)
        await wait_for(lambda: _async(len(sink.received) == 2 or None), timeout=10, what="the second email")
    assert logged(log_tee, "attempt failed", since=start) == []
    assert {r.username for r in await sent_rows(db) if r.sent_at is not None} == {"alice", "bob"}


async def test_smtp_451_is_retried_with_growing_backoff(worker_settings, db, sink) -> None:
    await add_user(db)
    sink.script.extend(["451 4.3.0 try again later"] * 3)
    with running_worker(worker_settings) as broker:
        broker.enqueue(verify_message())
        await wait_for(lambda: received(sink), timeout=20, what="the email after three 451s")
    assert len(sink.attempts) == 4 and len(sink.received) == 1
    gaps = [later - earlier for earlier, later in zip(sink.attempts, sink.attempts[1:], strict=False)]
    # Backoff i is at least WORKER_MIN_BACKOFF_MS * 2**i (jitter only adds).
    assert all(gap >= 0.1 * 2**i for i, gap in enumerate(gaps)), gaps
    assert gaps[2] > gaps[0], gaps


async def test_the_timeline_shows_each_attempt_and_its_smtp_answer_in_order(
    worker_settings, db, sink
) -> None:
    """A 451 (whose text echoes the address, masked in the record), then the attempt that sent the email."""
    email = await add_user(db)
    sink.script.append(f"451 4.3.0 <{email}> greylisted, try again")
    message = verify_message()
    with running_worker(worker_settings) as broker:
        broker.enqueue(message)
        await wait_for(lambda: received(sink), timeout=20, what="the email after a 451")
    async with db.connect() as connection:
        found = await wait_for(
            lambda: _sent_timeline(connection), timeout=10, what="the sent attempt on the timeline"
        )
    assert found is not None
    lines = [what for _, what in found if what.startswith("email attempt")]
    assert lines == [
        f"email attempt 1 deferred  event_id={message.message_id}  "
        "smtp=451  4.3.0 <[address]> greylisted, try again",
        f"email attempt 2 sent  event_id={message.message_id}",
    ]
    assert all("alice" not in what for _, what in found)


async def _sent_timeline(connection: Any) -> list[tuple[Any, str]] | None:
    found = await load_timeline(connection, "alice")
    assert found is not None
    steps = found[0]
    return steps if any(what.startswith("email attempt 2 sent") for _, what in steps) else None


async def test_a_user_not_yet_visible_is_retried_until_it_is(worker_settings, db, sink, log_tee) -> None:
    start = len(log_tee.lines)
    with running_worker(worker_settings) as broker:
        broker.enqueue(verify_message("late"))
        await wait_logged(log_tee, "attempt failed", since=start)
        await add_user(db, "late")
        await wait_for(lambda: received(sink), timeout=10, what="the email once the user is visible")
    assert "UserNotVisible" in logged(log_tee, "attempt failed", since=start)[0]["error"]


async def test_bad_payload_is_dead_lettered_without_retry(worker_settings, db, sink) -> None:
    with running_worker(worker_settings) as broker:
        broker.enqueue(verify_message(args=({"user": "alice", "extra": 1},)))
        letters = await wait_for(lambda: _async(broker.dead_letters()), timeout=10, what="a dead letter")
    assert letters[0].error.startswith("BadPayload") and "retries" not in letters[0].message.options
    assert sink.attempts == []


async def test_smtp_550_goes_to_the_dead_letters_and_replays_once(worker_settings, db, sink) -> None:
    await add_user(db)
    sink.script.append("550 5.1.1 mailbox unavailable")
    message = verify_message()
    with running_worker(worker_settings) as broker:
        broker.enqueue(message)
        await wait_for(lambda: _async(broker.dead_letters()), timeout=10, what="the dead letter")
        listed = signup_cli(worker_settings, "dlq", "list")
        assert listed.returncode == 0, listed.stderr
        (line,) = [line for line in listed.stdout.splitlines() if message.message_id in line]
        assert "send_verify_email" in line and "alice" in line and "550" in line
        assert len(sink.attempts) == 1 and sink.received == []

        replayed = signup_cli(worker_settings, "dlq", "replay", message.message_id)
        assert replayed.returncode == 0, replayed.stderr
        mails = await wait_for(lambda: received(sink), timeout=10, what="the replayed email")
        assert broker.dead_letters() == []
    assert len(mails) == 1 and mails[0].message_id == f"<{message.message_id}@signup-outbox>"
    assert "no dead-lettered messages" in signup_cli(worker_settings, "dlq", "list").stdout
