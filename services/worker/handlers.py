"""The worker's handlers: what each message does, at most once per message id (DESIGN §5).

A handler is named by its message class (``shared.messages``) and called as ``await handler(message,
context=..., message_id=..., connection=...)`` by the actor that ``services.worker.actors`` declares for it:
``connection`` is the message's one pooled connection, outside any transaction.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.worker import attempts, mailbox
from services.worker.emails import render_email
from services.worker.errors import UserNotVisible
from services.worker.mailbox import mailbox_allows
from shared.database import sent_notices, users, verify_emails
from shared.keys import code_digest, server_key, verification_code
from shared.logging import get_logger
from shared.messages import SendSignupNotice, SendVerifyEmail

if TYPE_CHECKING:
    from services.worker.actors import WorkerContext

log = get_logger()


# The handler's statements, built once: building a SQLAlchemy construct costs more than its round trip, and
# a statement built per message is compiled from the cache by its key only after that key is computed.
_USER = (
    sa.select(users.c.username, users.c.email, users.c.full_name, users.c.is_email_verified, users.c.language)
    .where(users.c.username == sa.bindparam("username"))
    .cte("u")
)
_CREATED = (
    insert(verify_emails)
    .from_select(
        ["username", "email", "code_sha256", "event_id", "expired_at"],
        sa.select(
            _USER.c.username,
            _USER.c.email,
            sa.bindparam("digest", type_=sa.String()),
            sa.bindparam("event", type_=sa.Uuid()),
            sa.bindparam("expires", type_=sa.DateTime(timezone=True)),
        ).where(sa.not_(_USER.c.is_email_verified)),
    )
    .on_conflict_do_nothing(index_elements=["event_id"])
    .returning(verify_emails.c.id)
    .cte("created")
)
LOAD_USER_AND_ENSURE_ROW = sa.select(_USER, sa.select(_CREATED.c.id).scalar_subquery().label("email_id"))
"""The user (no row if missing) and, unless verified, the id of the verify_emails row this statement
created for the event (the message id, the idempotency key) as ``email_id``: NULL if it existed already.
One round trip::

    WITH u AS (SELECT username, email, full_name, is_email_verified, language FROM users
               WHERE username = :username),
         created AS (INSERT INTO verify_emails (username, email, code_sha256, event_id, expired_at)
                     SELECT username, email, :digest, :event, :expires FROM u
                     WHERE NOT is_email_verified
                     ON CONFLICT (event_id) DO NOTHING RETURNING id)
    SELECT u.*, (SELECT id FROM created) AS email_id FROM u
"""
_ROW_OF_EVENT = sa.select(verify_emails.c.id).where(verify_emails.c.event_id == sa.bindparam("event"))
_LOCK_ROW = sa.select(verify_emails).where(verify_emails.c.id == sa.bindparam("email_id")).with_for_update()
_MARK_SENT = (
    verify_emails.update()
    .where(verify_emails.c.id == sa.bindparam("email_id"))
    .values(
        sent_at=sa.bindparam("now"), expired_at=sa.bindparam("expires"), code_sha256=sa.bindparam("digest")
    )
    # The attempt's record and a few old ones' purge ride along: no round trip of their own.
    .add_cte(attempts.RECORD.cte("attempt"), attempts.PURGE.cte("purged"))
)


async def prepare_statements(connection: AsyncConnection) -> None:
    """Run each of the handler's statements once with arguments no row matches, in the caller's transaction
    (which it rolls back): SQLAlchemy compiles each and asyncpg prepares it on ``connection``, so the first
    message on that connection skips both (a few milliseconds on a fresh process's first message)."""
    now = datetime.now(UTC)
    # No user is named "" (usernames have 3 characters at least), and row ids start at 1.
    event = uuid.uuid4()
    nothing = {"username": "", "digest": "", "event": event, "expires": now, "email_id": 0}
    nothing |= attempts.sent(event, at=now, retention_hours=1)
    for statement in (LOAD_USER_AND_ENSURE_ROW, _ROW_OF_EVENT, _LOCK_ROW, _MARK_SENT):
        await connection.execute(statement, nothing)
    await mailbox.prepare_statements(connection)


async def send_verify_email(
    command: SendVerifyEmail, *, context: WorkerContext, message_id: str, connection: AsyncConnection
) -> None:
    """Send the email for ``command`` unless message ``message_id`` already sent it or the user is verified.

    The signup's email and every resend are this same command: each message id gets its own row, code and
    expiry, and once it is sent the API refuses the user's earlier links (``410``, superseded).

    Raises ``UserNotVisible`` when the user is missing (not committed yet: the message is retried), and
    whatever the mailer or the database raise.
    """
    settings = context.settings
    event_id = uuid.UUID(message_id)
    ttl = timedelta(minutes=settings.verify_email_ttl_minutes)
    # The same code on every delivery of this message: a redelivery after a crash sends the same link.
    code = verification_code(server_key(settings.worker_code_secret, setting="WORKER_CODE_SECRET"), event_id)
    # SQLAlchemy Core on the message's one connection, without the ORM session's bookkeeping per statement:
    # every round trip before the send is on the way from the commit to the inbox. The first statement is a
    # transaction of its own (autocommit: no BEGIN and COMMIT round trips around it).
    await connection.execution_options(isolation_level="AUTOCOMMIT")
    async with connection.begin():
        found = await connection.execute(
            LOAD_USER_AND_ENSURE_ROW,
            {
                "username": command.username,
                "digest": code_digest(code),
                "event": event_id,
                "expires": datetime.now(UTC) + ttl,
            },
        )
        user = found.one_or_none()
        if user is None:
            raise UserNotVisible("user not yet visible")
        if user.is_email_verified:
            # A resend asked for while unverified, and the address got verified before it left.
            log.info("email already verified; nothing sent", username=command.username)
            return
        email_id = user.email_id
        if email_id is None:  # a redelivery: the row exists (ON CONFLICT waited for its transaction to end)
            email_id = (await connection.execute(_ROW_OF_EVENT, {"event": event_id})).scalar_one()
    await connection.execution_options(isolation_level=connection.default_isolation_level)
    # The row (and its code) commits before anything is sent: a redelivery after a crash between the
    # send and the commit below sends the very same email (same link, same Message-ID), not a second one.
    failure: dict[str, Any] | None = None
    try:
        async with connection.begin():
            row = (await connection.execute(_LOCK_ROW, {"email_id": email_id})).one()
            if row.sent_at is not None:
                log.info("duplicate delivery; email already sent", username=command.username)
                return
            if not await mailbox_allows(connection, row.email, per_day=settings.mailbox_max_emails_per_day):
                context.metrics.emails_capped.labels(kind="verify_email").inc()
                log.warning("mailbox daily cap reached; nothing sent", username=command.username)
                return
            link = verify_link(base_url=settings.public_base_url, email_id=row.id, secret_code=code)
            email = render_email(
                "verify_email",
                settings=settings,
                to=row.email,
                message_id=message_id,
                language=user.language,  # the user's, read now: a resend is written in it too
                full_name=user.full_name,
                username=command.username,
                link=link,
                valid_for=ttl,
                account_kept_for=timedelta(hours=settings.unverified_account_ttl_hours),
            )
            try:
                await context.mailer.send(email)
            except Exception as exc:
                failure = attempts.failed(event_id, exc, recipient=row.email)
                raise
            now = datetime.now(UTC)
            # The link's lifetime starts when the email leaves, not when the first attempt began. The digest
            # is written again: a row made by a process with another key (an unset WORKER_CODE_SECRET draws
            # one per process) would otherwise not match the code this email carries.
            await connection.execute(
                _MARK_SENT,
                {"email_id": email_id, "expires": now + ttl, "digest": code_digest(code)}
                | attempts.sent(event_id, at=now, retention_hours=settings.outbox_retention_hours),
            )
    except Exception:
        # After the rollback (which uncounted the mailbox's send): the failed attempt, in its own statement.
        if failure is not None:
            await _record_failure(connection, failure)
        raise
    context.metrics.emails_sent.labels(kind="verify_email").inc()
    log.info("verification email sent", username=command.username, email=row.email, verify_email_id=email_id)


_NOTICE_OWNER = sa.select(users.c.email, users.c.full_name).where(
    users.c.username == sa.bindparam("username")
)
_NOTICE_RECORD = (
    insert(sent_notices)
    .values(event_id=sa.bindparam("event"), username=sa.bindparam("username"))
    .on_conflict_do_nothing(index_elements=["event_id"])
    .returning(sent_notices.c.event_id)
)


async def send_signup_notice(
    command: SendSignupNotice, *, context: WorkerContext, message_id: str, connection: AsyncConnection
) -> None:
    """Tell the user whose address someone signed up with: the API answered that signup as if it had worked
    and stored nothing of it (DESIGN §8). Nothing the other person typed is in the email.

    The record of the message id and the send share one transaction: a second delivery waits on the
    record's insert and then finds it; a crash between the send and the commit sends the notice again
    (same Message-ID), which a duplicate notice costs nothing worse than.
    """
    async with connection.begin():
        user = (await connection.execute(_NOTICE_OWNER, {"username": command.username})).one_or_none()
        if user is None:  # the account was deleted since
            log.info("notice owner gone; nothing sent", username=command.username)
            return
        event = uuid.UUID(message_id)
        recorded = await connection.execute(_NOTICE_RECORD, {"event": event, "username": command.username})
        if recorded.one_or_none() is None:
            log.info("duplicate delivery; notice already sent", username=command.username)
            return
        if not await mailbox_allows(
            connection, user.email, per_day=context.settings.mailbox_max_emails_per_day
        ):
            context.metrics.emails_capped.labels(kind="signup_notice").inc()
            log.warning("mailbox daily cap reached; nothing sent", username=command.username)
            return
        email = render_email(
            "signup_notice",
            settings=context.settings,
            to=user.email,
            message_id=message_id,
            language=command.language,  # the signup's that met the address, which stored nothing else
            username=command.username,
        )
        await context.mailer.send(email)
    context.metrics.emails_sent.labels(kind="signup_notice").inc()
    log.info("signup notice sent", username=command.username, email=user.email)


async def _record_failure(connection: AsyncConnection, failure: dict[str, Any]) -> None:
    """Record a failed attempt; a failure to record it is logged, never put in place of the send's error."""
    try:
        await attempts.record_failure(connection, failure)
    except Exception as exc:
        log.warning("email attempt not recorded", error=type(exc).__name__)


def verify_link(*, base_url: str, email_id: int, secret_code: str) -> str:
    """The link in the email: the API's ``GET /v1/verify_email`` with the row's id and code."""
    query = urlencode({"email_id": email_id, "secret_code": secret_code})
    return f"{base_url.rstrip('/')}/v1/verify_email?{query}"
