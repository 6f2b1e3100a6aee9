"""The record of every attempt to send an email, for a signup's timeline (DESIGN §5, §14).

One ``email_attempts`` row per attempt: the message id, the attempt's ordinal among that message's
attempts, when it ended and how: ``sent``, ``deferred`` (SMTP 4xx), ``rejected`` (SMTP 5xx) or ``failed``
(no SMTP answer: our error's class and text). The SMTP reply's text is kept with every address in it
masked, cut to ``DETAIL_CHARS``; the code the email carries is never in it (the server does not echo the
body). A sent attempt is written by the statement that records ``sent_at`` (no round trip of its own); a
failed one, after the send's transaction rolled back, in a statement of its own.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.worker.errors import SmtpDeferred, SmtpRejected
from shared.database import email_attempts

DETAIL_CHARS = 200
# Rows older than the outbox's retention that each sent attempt deletes: the table stays about that long.
PURGE_PER_SEND = 10
_ADDRESS = re.compile(r"[^\s<>\"'()\[\],;:]*@[^\s<>\"'()\[\],;:]*")

_NEXT_ATTEMPT = (
    sa.select(sa.func.count() + 1)
    .select_from(email_attempts)
    .where(email_attempts.c.event_id == sa.bindparam("event"))
    .scalar_subquery()
)
RECORD = email_attempts.insert().values(
    event_id=sa.bindparam("event"),
    attempt=_NEXT_ATTEMPT,
    attempted_at=sa.bindparam("now", type_=sa.DateTime(timezone=True)),
    outcome=sa.bindparam("outcome", type_=sa.String()),
    smtp_code=sa.bindparam("smtp_code", type_=sa.SmallInteger()),
    detail=sa.bindparam("detail", type_=sa.String()),
)
"""One attempt of message ``event``, numbered after those recorded (the send's row lock orders them)."""
PURGE = email_attempts.delete().where(
    email_attempts.c.id.in_(
        sa.select(email_attempts.c.id)
        .where(
            email_attempts.c.attempted_at
            < sa.func.now()
            - sa.func.make_interval(0, 0, 0, 0, sa.bindparam("retention_hours", type_=sa.Integer()))
        )
        .order_by(email_attempts.c.attempted_at)
        .limit(PURGE_PER_SEND)
        .scalar_subquery()
    )
)


def mask(text: str, recipient: str) -> str:
    """``text`` without any address (nor the recipient's local part), on one line, at most DETAIL_CHARS."""
    text = _ADDRESS.sub("[address]", " ".join(text.split()))
    local = recipient.rpartition("@")[0]
    if len(local) >= 3:
        text = re.sub(re.escape(local), "[address]", text, flags=re.IGNORECASE)
    return text[:DETAIL_CHARS]


def sent(event_id: uuid.UUID, *, at: datetime, retention_hours: int) -> dict[str, Any]:
    """The parameters of ``RECORD`` and ``PURGE`` for an attempt that sent the email at ``at``."""
    return {
        "event": event_id,
        "now": at,
        "outcome": "sent",
        "smtp_code": None,
        "detail": None,
        "retention_hours": retention_hours,
    }


def failed(event_id: uuid.UUID, error: BaseException, *, recipient: str) -> dict[str, Any]:
    """The parameters of ``RECORD`` for an attempt that ended in ``error``."""
    now = datetime.now(UTC)
    if isinstance(error, SmtpDeferred | SmtpRejected):
        outcome = "deferred" if isinstance(error, SmtpDeferred) else "rejected"
        detail = mask(error.reply, recipient)
        return {"event": event_id, "now": now, "outcome": outcome, "smtp_code": error.code, "detail": detail}
    detail = mask(f"{type(error).__name__}: {error}", recipient)
    return {"event": event_id, "now": now, "outcome": "failed", "smtp_code": None, "detail": detail}


async def record_failure(connection: AsyncConnection, params: dict[str, Any]) -> None:
    """Write a failed attempt in a transaction of its own on ``connection`` (outside any transaction)."""
    async with connection.begin():
        await connection.execute(RECORD, params)
