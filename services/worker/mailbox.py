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

_GMAIL = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}
# Rows older than a day that each send deletes: one row in, up to this many out, so the table stays about a
# day of sends however many mailboxes come and go.
PURGE_PER_SEND = 10

_LOCK = sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(sa.bindparam("mailbox"), 0)))
# One statement after the lock (its snapshot must be taken after the wait, so that it sees the sends of the
# transaction it waited for): count the day's sends, record this one if the cap allows, and purge a few rows
# older than a day. Data-modifying CTEs run whether or not the outer query reads them.
_COUNT_AND_RECORD = sa.text(
    """
WITH allowed AS (
    SELECT count(*) < :per_day AS ok FROM mailbox_sends
    WHERE mailbox_sha256 = :mailbox AND sent_at > now() - interval '24 hours'
), recorded AS (
    INSERT INTO mailbox_sends (mailbox_sha256) SELECT :mailbox FROM allowed WHERE ok RETURNING id
), purged AS (
    DELETE FROM mailbox_sends WHERE id IN (
        SELECT id FROM mailbox_sends WHERE sent_at <= now() - interval '24 hours' LIMIT :purge
    )
)
SELECT ok FROM allowed
"""
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
    mailbox = hashlib.sha256(mailbox_of(address).encode()).hexdigest()
    await connection.execute(_LOCK, {"mailbox": mailbox})
    allowed = await connection.execute(
        _COUNT_AND_RECORD, {"mailbox": mailbox, "per_day": per_day, "purge": PURGE_PER_SEND}
    )
    return bool(allowed.scalar_one())


async def prepare_statements(connection: AsyncConnection) -> None:
    """Run the cap's statements once for a mailbox nobody has and a cap of 0, in the caller's transaction
    (which it rolls back): the first email on ``connection`` then skips compiling and preparing them."""
    nobody = {"mailbox": "", "per_day": 0, "purge": 0}
    await connection.execute(_LOCK, nobody)
    await connection.execute(_COUNT_AND_RECORD, nobody)
