"""The worker's handlers: what each message does, at most once per message id (DESIGN §4).

A handler is named by its message class (``shared.messages``) and called as ``await handler(message,
context=..., message_id=...)`` by the actor that ``services.worker.actors`` declares for it.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.worker.emails import render_email
from services.worker.errors import UserNotVisible
from shared.database import users, verify_emails
from shared.logging import get_logger
from shared.messages import SendVerifyEmail
from shared.settings import Settings

if TYPE_CHECKING:
    from services.worker.actors import WorkerContext

log = get_logger()


async def send_verify_email(command: SendVerifyEmail, *, context: WorkerContext, message_id: str) -> None:
    """Send the email for ``command`` unless message ``message_id`` already sent it or the user is verified.

    The signup's email and every resend are this same command: each message id gets its own row, code and
    expiry, and once it is sent the API refuses the user's earlier links (``410``, superseded).

    Raises ``UserNotVisible`` when the user is missing (unless ``WORKER_SKIP_RETRY_MISSING_USER``, which
    drops the message as the course's ``SkipRetry`` does), and whatever the mailer or the database raise.
    """
    settings = context.settings
    event_id = uuid.UUID(message_id)
    # One connection for the whole message: one pool checkout (and its liveness ping) instead of one per
    # transaction, and SQLAlchemy Core without the ORM session's bookkeeping per statement.
    async with context.engine.connect() as connection:
        async with connection.begin():
            user = await _load_user(connection, command.username)
            if user is None:
                if settings.worker_skip_retry_missing_user:
                    log.warning("user not found; dropping the message (SkipRetry)", username=command.username)
                    return
                raise UserNotVisible("user not yet visible")
            if user.is_email_verified:
                # A resend asked for while unverified, and the address got verified before it left.
                log.info("email already verified; nothing sent", username=command.username)
                return
            email_id = await _ensure_row(connection, event_id=event_id, user=user, settings=settings)
        # The row (and its code) commits before anything is sent: a redelivery after a crash between the
        # send and the commit below sends the very same email (same link, same Message-ID), not a second one.
        async with connection.begin():
            row = (
                await connection.execute(
                    sa.select(verify_emails).where(verify_emails.c.id == email_id).with_for_update()
                )
            ).one()
            if row.sent_at is not None:
                log.info("duplicate delivery; email already sent", username=command.username)
                return
            link = verify_link(
                base_url=settings.public_base_url, email_id=row.id, secret_code=row.secret_code
            )
            email = render_email(
                "verify_email",
                settings=settings,
                to=row.email,
                message_id=message_id,
                full_name=user.full_name,
                link=link,
                minutes=settings.verify_email_ttl_minutes,
            )
            await context.mailer.send(email)
            now = datetime.now(UTC)
            await connection.execute(
                verify_emails.update()
                .where(verify_emails.c.id == email_id)
                # The link's lifetime starts when the email leaves, not when the first attempt began.
                .values(sent_at=now, expired_at=now + timedelta(minutes=settings.verify_email_ttl_minutes))
            )
    context.metrics.emails_sent.labels(kind="verify_email").inc()
    log.info("verification email sent", username=command.username, email=row.email, verify_email_id=email_id)


def verify_link(*, base_url: str, email_id: int, secret_code: str) -> str:
    """The link in the email: the API's ``GET /v1/verify_email`` with the row's id and code."""
    query = urlencode({"email_id": email_id, "secret_code": secret_code})
    return f"{base_url.rstrip('/')}/v1/verify_email?{query}"


async def _load_user(connection: AsyncConnection, username: str) -> Any | None:
    query = sa.select(users.c.username, users.c.email, users.c.full_name, users.c.is_email_verified).where(
        users.c.username == username
    )
    return (await connection.execute(query)).one_or_none()


async def _ensure_row(
    connection: AsyncConnection,
    *,
    event_id: uuid.UUID,
    user: Any,
    settings: Settings,
) -> int:
    """Get or create the verify_emails row of ``event_id`` (the idempotency key) and return its id."""
    inserted = await connection.execute(
        insert(verify_emails)
        .values(
            username=user.username,
            email=user.email,
            secret_code=secrets.token_urlsafe(32),
            event_id=event_id,
            expired_at=datetime.now(UTC) + timedelta(minutes=settings.verify_email_ttl_minutes),
        )
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(verify_emails.c.id)
    )
    email_id = inserted.scalar_one_or_none()
    if email_id is None:  # a redelivery: the row exists (ON CONFLICT waited for its transaction to end)
        query = sa.select(verify_emails.c.id).where(verify_emails.c.event_id == event_id)
        email_id = (await connection.execute(query)).scalar_one()
    return int(email_id)
