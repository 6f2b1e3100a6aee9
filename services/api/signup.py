"""The two use cases behind the HTTP API: sign a user up, and verify their email address."""

from __future__ import annotations

import contextlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import msgspec
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.api.admission import Ticket
from services.api.dispatch import Dispatcher
from services.api.idempotency import IdempotencyKey, KeyReused, store_answer
from services.api.passwords import hash_password
from services.api.schemas import CreateUserRequest, CreateUserResponse, User
from shared.database import EMAIL_TAKEN_CONSTRAINT, IDEMPOTENCY_KEY_TAKEN_CONSTRAINT, users, verify_emails
from shared.keys import code_digest
from shared.languages import DEFAULT_LANGUAGE
from shared.logging import get_logger
from shared.messages import Message, SendSignupNotice, SendVerifyEmail

log = get_logger()

_UNIQUE_VIOLATION = "23505"
# Compared against when the id is unknown, so that an unknown id costs the same comparison as a known one.
_NO_CODE_DIGEST = code_digest(secrets.token_urlsafe(32))


BeforeCommit = Callable[[], Awaitable[None]]
"""Awaited inside the signup's transaction, right before its commit; what it raises rolls the signup back."""

# users.password_changed_at's default: what a new user's answer carries.
NEVER_CHANGED = datetime(1, 1, 1, tzinfo=UTC)


class Taken(Exception):
    """The username belongs to another user already (a taken email is never told: DESIGN §8)."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} is taken")
        self.field = field


async def sign_up(
    sessions: async_sessionmaker[AsyncSession],
    *,
    request: CreateUserRequest,
    dispatcher: Dispatcher,
    before_commit: BeforeCommit | None = None,
    trace_id: str | None,
    language: str = DEFAULT_LANGUAGE,
    ticket: Ticket | None = None,
    idempotency: IdempotencyKey | None = None,
    idempotency_ttl: timedelta = timedelta(hours=24),
    unverified_ttl: timedelta = timedelta(hours=24),
) -> User:
    """Create the user and dispatch its verification email in ONE transaction.

    ``language`` (``shared.languages.choose_language``) is stored with the user for every email to them,
    and is the language of the notice to a taken address's owner.
    With ``idempotency`` the answer is stored under that key in the same transaction. With ``ticket`` the hash
    waits for an admission slot, and the ticket is checked after the hash and right before the commit.
    A taken email writes nothing but a ``SendSignupNotice`` to the address's owner and returns the user as
    it would have been. Raises ``Taken`` when the username is in use, ``KeyReused`` when another request
    committed under the same key, ``Shed`` when refused a slot or when the ticket's deadline passed or its
    client left, and whatever ``before_commit`` (awaited right before the commit) raises; database errors
    propagate.
    Nothing is written unless everything is.
    """
    async with ticket.hashing() if ticket is not None else contextlib.nullcontext():
        hashed = await hash_password(request.password)
    if ticket is not None:
        ticket.check()
    # A new address that a concurrent signup commits first makes the insert fail on the email index: the
    # second attempt then sees it taken and answers as for any taken address.
    for attempt in (1, 2):
        try:
            return await _write(
                sessions,
                request=request,
                hashed=hashed,
                dispatcher=dispatcher,
                before_commit=before_commit,
                trace_id=trace_id,
                language=language,
                ticket=ticket,
                idempotency=idempotency,
                idempotency_ttl=idempotency_ttl,
                unverified_ttl=unverified_ttl,
            )
        except IntegrityError as exc:
            cause = getattr(exc.orig, "__cause__", None)  # the asyncpg exception under SQLAlchemy's wrapper
            if getattr(cause, "sqlstate", None) != _UNIQUE_VIOLATION:
                raise
            constraint = getattr(cause, "constraint_name", None)
            if constraint == IDEMPOTENCY_KEY_TAKEN_CONSTRAINT:
                raise KeyReused from None  # the same body would have met the same username first
            if constraint != EMAIL_TAKEN_CONSTRAINT:
                raise Taken("username") from None
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


# An unverified account older than UNVERIFIED_ACCOUNT_TTL_HOURS gives its address and username up: the
# signup that meets it deletes it (with its links, by cascade) before looking at who holds what.
_GIVE_WAY = users.delete().where(
    sa.not_(users.c.is_email_verified),
    users.c.created_at < sa.func.now() - sa.bindparam("ttl", type_=sa.Interval()),
    sa.or_(
        sa.func.lower(users.c.email) == sa.func.lower(sa.bindparam("email")),
        users.c.username == sa.bindparam("username"),
    ),
)

# Who holds the address (a verified account: an unverified one holds nothing), whether the username is
# taken, and the time a new row would get: one round trip, the same on every path, so that a taken address
# costs what a free one does (beside the hash).
_CLAIMS = sa.select(
    sa.func.now().label("now"),
    sa.select(users.c.username)
    .where(sa.func.lower(users.c.email) == sa.func.lower(sa.bindparam("email")), users.c.is_email_verified)
    .scalar_subquery()
    .label("owner"),
    sa.exists().where(users.c.username == sa.bindparam("username")).label("username_taken"),
)


async def _write(
    sessions: async_sessionmaker[AsyncSession],
    *,
    request: CreateUserRequest,
    hashed: str,
    dispatcher: Dispatcher,
    before_commit: BeforeCommit | None,
    trace_id: str | None,
    language: str,
    ticket: Ticket | None,
    idempotency: IdempotencyKey | None,
    idempotency_ttl: timedelta,
    unverified_ttl: timedelta,
) -> User:
    """The signup's one transaction. For a taken address it writes only a notice to the address's owner and
    answers as if the user had been created (DESIGN §8, "No account enumeration")."""
    async with sessions() as session, session.begin():
        who = {"email": request.email, "username": request.username}
        await session.execute(_GIVE_WAY, {**who, "ttl": unverified_ttl})
        claims = (await session.execute(_CLAIMS, who)).one()
        if claims.owner is None:
            row = (
                await session.execute(
                    users.insert()
                    .values(
                        username=request.username,
                        hashed_password=hashed,
                        full_name=request.full_name,
                        email=request.email,
                        language=language,
                    )
                    .returning(users.c.password_changed_at, users.c.created_at)
                )
            ).one()
            message: Message = SendVerifyEmail(username=request.username)
            password_changed_at, created_at = row.password_changed_at, row.created_at
        elif claims.username_taken:
            raise Taken("username")  # usernames are public handles: saying so tells nothing about an address
        else:
            message = SendSignupNotice(username=claims.owner, language=language)
            password_changed_at, created_at = NEVER_CHANGED, claims.now
        user = User(
            username=request.username,
            full_name=request.full_name,
            email=request.email,
            password_changed_at=password_changed_at,
            created_at=created_at,
        )
        if idempotency is not None:
            answer = msgspec.json.encode(CreateUserResponse(user=user))
            await store_answer(session, idempotency, answer, ttl=idempotency_ttl)
        await dispatcher.dispatch(session, message, trace_id=trace_id)
        if before_commit is not None:
            await before_commit()
        if ticket is not None:
            ticket.check()
    if claims.owner is None:
        # ``committed`` marks this line for tools (the lab's latency is measured from it): keep the field.
        log.info("user signed up", username=request.username, committed=True)
    else:
        log.info("signup with a taken address; owner notified", owner=claims.owner, committed=False)
    return user


class VerifyEmailNotFound(Exception):
    """No verification email has this id, or its code is not this one."""


class VerifyEmailExpired(Exception):
    """The link was right but came too late."""


class VerifyEmailSuperseded(Exception):
    """The link was right, but a newer verification email has been sent since: only its link works."""


class VerifyEmailClaimed(VerifyEmailExpired):
    """Another account verified this address first: the link came too late for it (410, as expired)."""


async def verify_email(
    sessions: async_sessionmaker[AsyncSession],
    *,
    email_id: int,
    secret_code: str,
    unverified_ttl: timedelta = timedelta(hours=24),
) -> bool:
    """Mark the code used and the user's email verified, and return True; a second use of a valid link
    succeeds again and returns False (verified already).

    Verifying deletes every other, unverified, account that claimed the same address: only a verified
    account holds one (DESIGN §8, "Pre-hijacking").

    Raises ``VerifyEmailNotFound`` for an unknown id or wrong code, ``VerifyEmailSuperseded`` once a newer
    email to the user has been sent, ``VerifyEmailExpired`` after expiry or once the account is older than
    ``unverified_ttl`` unverified, ``VerifyEmailClaimed`` when another account verified the address first.
    """
    try:
        return await _verify(
            sessions, email_id=email_id, secret_code=secret_code, unverified_ttl=unverified_ttl
        )
    except IntegrityError as exc:
        cause = getattr(exc.orig, "__cause__", None)
        if getattr(cause, "constraint_name", None) == EMAIL_TAKEN_CONSTRAINT:
            raise VerifyEmailClaimed from None
        raise


# A verification is two statements, so that it takes few turns of an event loop that a flood keeps busy:
# the link's row (locked) with everything it is judged by, then every write at once.
_NEWER = verify_emails.alias("newer")
_LINK = (
    sa.select(
        verify_emails.c.code_sha256,
        verify_emails.c.is_used,
        verify_emails.c.expired_at,
        verify_emails.c.username,
        verify_emails.c.email,
        # Only a newer email that has left counts: until then (or if it never can), this link still works.
        sa.exists()
        .where(
            _NEWER.c.username == verify_emails.c.username,
            _NEWER.c.id > verify_emails.c.id,
            _NEWER.c.sent_at.is_not(None),
        )
        .label("superseded"),
        users.c.created_at,
    )
    .select_from(verify_emails.outerjoin(users, users.c.username == verify_emails.c.username))
    .where(verify_emails.c.id == sa.bindparam("email_id"))
    .with_for_update(of=verify_emails)
)
_VERIFY = (
    # Verifying deletes every other, unverified, account that claimed the address. (No parameter is named
    # as a column: SQLAlchemy would read it as a value to SET in the UPDATEs.)
    users.delete()
    .where(
        sa.func.lower(users.c.email) == sa.func.lower(sa.bindparam("address")),
        users.c.username != sa.bindparam("owner"),
        sa.not_(users.c.is_email_verified),
    )
    .add_cte(
        verify_emails.update()
        .where(verify_emails.c.id == sa.bindparam("link"))
        .values(is_used=sa.true())
        .cte("used"),
        users.update()
        .where(users.c.username == sa.bindparam("owner"))
        .values(is_email_verified=sa.true())
        .cte("verified"),
    )
)


async def _verify(
    sessions: async_sessionmaker[AsyncSession], *, email_id: int, secret_code: str, unverified_ttl: timedelta
) -> bool:
    async with sessions() as session, session.begin():
        row = (await session.execute(_LINK, {"email_id": email_id})).one_or_none()
        # The row holds the code's SHA-256 only. compare_digest: the time taken must not tell an attacker
        # how much of a guess was right, nor (comparing against a stand-in) whether the id exists.
        expected = _NO_CODE_DIGEST if row is None else row.code_sha256
        if not hmac.compare_digest(expected.encode(), code_digest(secret_code).encode()) or row is None:
            raise VerifyEmailNotFound
        if row.is_used:
            return False
        if row.superseded:
            raise VerifyEmailSuperseded
        now = datetime.now(UTC)
        if row.expired_at <= now:
            raise VerifyEmailExpired
        if row.created_at is None or row.created_at <= now - unverified_ttl:
            raise VerifyEmailExpired  # the unverified claim gave its address up
        await session.execute(_VERIFY, {"link": email_id, "owner": row.username, "address": row.email})
    log.info("email verified", username=row.username, verify_email_id=email_id)
    return True
