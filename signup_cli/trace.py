"""``signup trace USERNAME``: a signup's timeline from the database, request and trace ids (DESIGN §8)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.database import (
    create_engine,
    dead_letter_actions,
    email_attempts,
    outbox,
    users,
    verify_email_resends,
    verify_emails,
)
from shared.settings import Settings
from shared.telemetry import trace_id_of

Step = tuple[datetime, str]


async def timeline(settings: Settings, username: str) -> tuple[list[Step], list[str]] | None:
    """(dated steps in order, undated facts), or None when there is no such user."""
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            return await load_timeline(connection, username)
    finally:
        await engine.dispose()


async def load_timeline(connection: AsyncConnection, username: str) -> tuple[list[Step], list[str]] | None:
    """``timeline`` on an open connection (the operator console's signup page shows the same)."""
    user = (await connection.execute(sa.select(users).where(users.c.username == username))).one_or_none()
    if user is None:
        return None
    events = (
        # Through the expression index on payload->>'username' (a containment test would read every row).
        await connection.execute(sa.select(outbox).where(outbox.c.payload["username"].astext == username))
    ).all()
    emails = (
        await connection.execute(
            sa.select(verify_emails).where(verify_emails.c.username == username).order_by(verify_emails.c.id)
        )
    ).all()
    resends = (
        await connection.execute(
            sa.select(verify_email_resends).where(verify_email_resends.c.username == username)
        )
    ).all()
    actions = (
        await connection.execute(
            sa.select(dead_letter_actions).where(
                dead_letter_actions.c.message_id.in_([str(event.event_id) for event in events])
            )
        )
    ).all()
    message_ids = {event.event_id for event in events} | {email.event_id for email in emails}
    sends = (
        await connection.execute(
            sa.select(email_attempts)
            .where(email_attempts.c.event_id.in_(message_ids))
            .order_by(email_attempts.c.event_id, email_attempts.c.attempt)
        )
    ).all()
    steps: list[Step] = [(user.created_at, "user created")]
    for event in events:
        steps.append(
            (
                event.created_at,
                f"outbox {event.actor} created  event_id={event.event_id} request_id={event.trace_id} "
                f"trace_id={trace_id_of(event.trace_context) or '-'}",
            )
        )
        if event.published_at is not None:
            steps.append((event.published_at, f"outbox {event.actor} published  attempts={event.attempts}"))
        if event.republished_at is not None:
            steps.append(
                (
                    event.republished_at,
                    f"outbox {event.actor} re-published by reconciliation (message lost from Redis)  "
                    f"times={event.republish_count}",
                )
            )
        if event.handled_at is not None:
            steps.append((event.handled_at, f"outbox {event.actor} handled by a worker"))
    for action in actions:
        steps.append(
            (
                action.acted_at,
                f"dead letter {action.action} by {action.operator}  event_id={action.message_id} "
                f"last_error={action.error}",
            )
        )
    for send in sends:
        answer = f"  smtp={send.smtp_code}" if send.smtp_code is not None else ""
        detail = f"  {send.detail}" if send.detail else ""
        steps.append(
            (
                send.attempted_at,
                f"email attempt {send.attempt} {send.outcome}  event_id={send.event_id}{answer}{detail}",
            )
        )
    for resend in resends:
        steps.append((resend.requested_at, f"resend requested  event_id={resend.event_id}"))
    for email in emails:
        steps.append((email.created_at, f"verify email created  id={email.id} event_id={email.event_id}"))
        if email.sent_at is not None:
            steps.append(
                (email.sent_at, f"verify email sent  id={email.id} expires={email.expired_at.isoformat()}")
            )
    facts = [f"verified: {'yes' if user.is_email_verified else 'no'}"]
    facts += [f"verify email {email.id}: {status}" for email, status in code_states(emails)]
    if not events:
        facts.append("no outbox row (purged after OUTBOX_RETENTION_HOURS, or never written)")
    return sorted(steps, key=lambda step: step[0]), facts


def code_states(emails: Sequence[Any]) -> list[tuple[Any, str]]:
    """Each email (oldest first) with what its link does now: only the newest sent one's code is current."""
    sent = [email.id for email in emails if email.sent_at is not None]
    newest = max(sent, default=None)
    states = []
    for email in emails:
        if email.is_used:
            state = "used (verified the address)"
        elif email.sent_at is None:
            state = "not sent yet"
        elif email.id != newest:
            state = f"superseded by {newest} (its link answers 410)"
        elif email.expired_at <= datetime.now(UTC):
            state = "current code, expired"
        else:
            state = "current code"
        states.append((email, state))
    return states


def run(settings: Settings, args: argparse.Namespace) -> int:
    found = asyncio.run(timeline(settings, args.username))
    if found is None:
        print(f"no user {args.username!r}")
        return 1
    steps, facts = found
    start = steps[0][0]
    print(f"signup of {args.username}")
    for at, what in steps:
        print(f"{at.isoformat()}  +{(at - start).total_seconds() * 1000:8.1f} ms  {what}")
    for fact in facts:
        print(fact)
    return 0
