"""The per-mailbox daily cap on the emails the worker sends (DESIGN §5, §8).

Accounts, resends and signups with a held address each have limits of their own; none stops many accounts,
or many spellings of one address, from filling one inbox. Every verification email and signup notice
counts against the mailbox it lands in: ``MAILBOX_MAX_EMAILS_PER_DAY`` in any 24 hours. The mailbox is the
address as the provider delivers it: letter case, a ``+tag`` and, at Gmail (``gmail.com``,
``googlemail.com``), dots in the local part do not make another one. Only its SHA-256 is stored.
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.database import mailbox_sends

_GMAIL = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}
# Rows older than a day that each send deletes: one row in, up to this many out, so the table stays about a
# day of sends however many mailboxes come and go.
PURGE_PER_SEND = 10
_DAY = sa.text("interval '24 hours'")

_LOCK = sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(sa.bindparam("mailbox"), 0)))
_SENT_TODAY = (
    sa.select(sa.func.count())
    .select_from(mailbox_sends)
    .where(
        mailbox_sends.c.mailbox_sha256 == sa.bindparam("mailbox"),
        mailbox_sends.c.sent_at > sa.func.now() - _DAY,
    )
)
_RECORD = mailbox_sends.insert().values(mailbox_sha256=sa.bindparam("mailbox"))
_PURGE = mailbox_sends.delete().where(
    mailbox_sends.c.id.in_(
        sa.select(mailbox_sends.c.id)
        .where(mailbox_sends.c.sent_at <= sa.func.now() - _DAY)
        .limit(PURGE_PER_SEND)
        .scalar_subquery()
    )
)


def mailbox_of(address: str) -> str:
    """The mailbox ``address`` lands in: ``A.Lice+promo@GoogleMail.com`` → ``alice@gmail.com``."""
    local, _, domain = address.strip().rpartition("@")
    local, domain = local.lower().split("+", 1)[0], domain.lower().rstrip(".")
    if domain in _GMAIL:
        domain = _GMAIL[domain]
        local = local.replace(".", "")
    return f"{local}@{domain}"


async def mailbox_allows(connection: AsyncConnection, address: str, *, per_day: int) -> bool:
    """Whether one more email may go to ``address``'s mailbox today; if so, it is counted.

    Runs in the caller's transaction, which must also send: a rollback uncounts it. Concurrent sends to one
    mailbox wait for each other on a transaction-scoped advisory lock, so the cap holds across workers.
    """
    if per_day == 0:
        return True
    key = {"mailbox": hashlib.sha256(mailbox_of(address).encode()).hexdigest()}
    await connection.execute(_LOCK, key)
    if (await connection.execute(_SENT_TODAY, key)).scalar_one() >= per_day:
        return False
    await connection.execute(_RECORD, key)
    await connection.execute(_PURGE)
    return True
