"""``Idempotency-Key`` for ``POST /v1/create_user``: a client's retry gets the original answer, not a 409.

A client whose signup timed out cannot know whether it committed. Retrying with the same key and body
returns the stored answer of the signup that committed (``200`` and the same user); the same key with another
body is refused (``422``). The answer is stored in the signup's own transaction, so it exists exactly when
the user does. A retry that arrives while the first attempt is still in its transaction waits for it: both
insert the same user, so PostgreSQL blocks the second on the unique index until the first commits, and the
second then finds the stored answer. Errors are not stored: a retry of a request that failed is run again
and, for a deterministic error (``400``, ``409``), fails the same way; after a ``503`` it may now succeed.
Keys are kept ``API_IDEMPOTENCY_TTL_HOURS`` (24). Only hashes are stored: SHA-256 of the key, and a
fingerprint of the request: HMAC-SHA-256 under the server's ``API_IDEMPOTENCY_SECRET`` of the key's hash and
the parsed request *without its password*. Neither the client's key (often guessable) nor a leak of the
table nor of the secret lets anyone test a password guess against it. A retry that changes only the
password is therefore the same request: it gets the stored answer (which holds no password), and the first
password stands.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
from dataclasses import dataclass
from datetime import timedelta

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.api.schemas import CreateUserRequest
from shared.database import idempotency_keys
from shared.logging import get_logger

log = get_logger()

HEADER = "Idempotency-Key"
PURGE_BATCH = 1000
PURGE_INTERVAL_S = 600.0


class KeyReused(Exception):
    """The key was used before with a different request body (422)."""


@dataclass(frozen=True)
class IdempotencyKey:
    """A request's key, as stored: never the key itself."""

    key_hash: str
    fingerprint: str

    @classmethod
    def of(cls, key: str, request: CreateUserRequest, *, secret: bytes) -> IdempotencyKey:
        """``key`` for ``request``: its fingerprint is keyed by the server's ``secret`` and leaves the
        password out (the request as parsed, so that the body's spacing or field order does not count)."""
        key_hash = hashlib.sha256(key.encode()).hexdigest()
        fields = msgspec.json.encode(msgspec.structs.replace(request, password=""))
        return cls(
            key_hash=key_hash,
            fingerprint=hmac.new(secret, key_hash.encode() + b"\n" + fields, hashlib.sha256).hexdigest(),
        )


async def find_answer(
    sessions: async_sessionmaker[AsyncSession], key: IdempotencyKey, *, ttl: timedelta
) -> bytes | None:
    """The stored ``200`` body for ``key`` if younger than ``ttl``; raises ``KeyReused`` for another body."""
    async with sessions() as session:
        row = (
            await session.execute(
                sa.select(idempotency_keys).where(
                    idempotency_keys.c.key_hash == key.key_hash,
                    idempotency_keys.c.created_at > sa.func.now() - ttl,
                )
            )
        ).one_or_none()
    if row is None:
        return None
    if not hmac.compare_digest(row.fingerprint, key.fingerprint):
        raise KeyReused
    log.info("idempotent replay")
    return bytes(row.response)


async def has_answer(sessions: async_sessionmaker[AsyncSession], key_hash: str, *, ttl: timedelta) -> bool:
    """Whether an answer younger than ``ttl`` is stored under ``key_hash`` (whatever body it was for)."""
    live = sa.exists().where(
        idempotency_keys.c.key_hash == key_hash, idempotency_keys.c.created_at > sa.func.now() - ttl
    )
    async with sessions() as session:
        return bool(await session.scalar(sa.select(live)))


async def store_answer(session: AsyncSession, key: IdempotencyKey, answer: bytes, *, ttl: timedelta) -> None:
    """Store ``answer`` (the ``200`` body) for ``key`` in ``session``'s transaction.

    An expired entry of the key is replaced; a live one makes the insert fail (the primary key's unique
    violation).
    """
    await session.execute(
        idempotency_keys.delete().where(
            idempotency_keys.c.key_hash == key.key_hash,
            idempotency_keys.c.created_at <= sa.func.now() - ttl,
        )
    )
    await session.execute(
        idempotency_keys.insert().values(
            key_hash=key.key_hash,
            fingerprint=key.fingerprint,
            response=answer,
        )
    )


async def purge_expired(sessions: async_sessionmaker[AsyncSession], *, ttl: timedelta) -> int:
    """Delete up to ``PURGE_BATCH`` entries older than ``ttl``; return how many."""
    expired = (
        sa.select(idempotency_keys.c.key_hash)
        .where(idempotency_keys.c.created_at <= sa.func.now() - ttl)
        .limit(PURGE_BATCH)
    )
    async with sessions() as session, session.begin():
        result = await session.execute(
            idempotency_keys.delete().where(idempotency_keys.c.key_hash.in_(expired.scalar_subquery()))
        )
    return int(result.rowcount)  # type: ignore[attr-defined]


class KeyPurge:
    """Deletes expired keys every ``PURGE_INTERVAL_S`` while the API runs (any number of replicas may)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, ttl: timedelta) -> None:
        self._sessions = sessions
        self._ttl = ttl
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(PURGE_INTERVAL_S)
            try:
                while await purge_expired(self._sessions, ttl=self._ttl) == PURGE_BATCH:
                    pass
            except Exception as exc:  # the database may be down: try again next time, loudly
                log.warning("idempotency key purge failed", error=type(exc).__name__)
