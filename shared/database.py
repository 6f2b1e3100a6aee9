"""The database: table definitions (the migrations are the source of truth for DDL) and engine factories.

The tables here must agree with what the migrations build, indexes included:
tests/integration/test_schema_drift.py compares them.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

metadata = sa.MetaData()

users = sa.Table(
    "users",
    metadata,
    sa.Column("username", sa.String(100), primary_key=True),
    sa.Column("hashed_password", sa.Text, nullable=False),
    sa.Column("full_name", sa.String(100), nullable=False),
    sa.Column("email", sa.String(200), nullable=False),
    sa.Column("is_email_verified", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column(
        "password_changed_at",
        sa.DateTime(timezone=True),
        nullable=False,
        server_default=sa.text("'0001-01-01 00:00:00+00'"),
    ),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    # The language of the user's emails, chosen at signup (shared/languages.py).
    sa.Column("language", sa.String(35), nullable=False, server_default="en"),
    # Only a verified account holds its address; any number of unverified ones may claim it (DESIGN §4).
    sa.Index(
        "users_email_lower_key",
        sa.func.lower(sa.column("email")),
        unique=True,
        postgresql_where=sa.text("is_email_verified"),
    ),
    sa.Index("users_email_lower_idx", sa.func.lower(sa.column("email"))),
    # The console's signups-per-minute chart and its list of signups, newest first (keyset).
    sa.Index("users_created_at_idx", "created_at", "username"),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("queue", sa.Text, nullable=False),
    sa.Column("payload", JSONB, nullable=False),
    sa.Column("trace_id", sa.Text),
    # W3C {"traceparent": ..., "tracestate": ...} of the span that wrote the row (DESIGN §12); None before.
    sa.Column("trace_context", JSONB),
    sa.Column("available_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("published_at", sa.DateTime(timezone=True)),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),
    # Set by the worker when the handler succeeded or the message was dead-lettered (DESIGN §13).
    sa.Column("handled_at", sa.DateTime(timezone=True)),
    # The last time reconciliation published the row again, and how often it did.
    sa.Column("republished_at", sa.DateTime(timezone=True)),
    sa.Column("republish_count", sa.Integer, nullable=False, server_default="0"),
    sa.Index(
        "outbox_unpublished_idx", "available_at", "id", postgresql_where=sa.text("published_at IS NULL")
    ),
    # The console's search by request id, and a signup's events for its timeline (signup trace).
    sa.Index("outbox_trace_id_idx", "trace_id"),
    sa.Index("outbox_payload_username_idx", sa.text("(payload ->> 'username')")),
    # The console's re-publishes in the last hour: only re-published rows are in it.
    sa.Index(
        "outbox_republished_idx", "republished_at", postgresql_where=sa.text("republished_at IS NOT NULL")
    ),
    sa.Index("outbox_published_at_idx", "published_at", postgresql_where=sa.text("published_at IS NOT NULL")),
    sa.Index(
        "outbox_unhandled_idx",
        "published_at",
        "id",
        postgresql_where=sa.text("published_at IS NOT NULL AND handled_at IS NULL"),
    ),
)

verify_emails = sa.Table(
    "verify_emails",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column(
        "username", sa.String(100), sa.ForeignKey("users.username", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("email", sa.String(200), nullable=False),
    # SHA-256 (hex) of the code the email carries: the code itself is never stored (shared/keys.py).
    sa.Column("code_sha256", sa.Text, nullable=False),
    sa.Column("is_used", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("expired_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    sa.Index("verify_emails_username_idx", "username"),
    # The console's emails-per-minute chart reads the last hour of sends through it.
    sa.Index("verify_emails_sent_at_idx", "sent_at", postgresql_where=sa.text("sent_at IS NOT NULL")),
)

# One row per email the worker sent, by the SHA-256 of the mailbox it lands in (services/worker/mailbox.py):
# what the per-mailbox daily cap counts. Each send deletes a few rows older than a day.
mailbox_sends = sa.Table(
    "mailbox_sends",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("mailbox_sha256", sa.Text, nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Index("mailbox_sends_mailbox_idx", "mailbox_sha256", "sent_at"),
    sa.Index("mailbox_sends_sent_at_idx", "sent_at"),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    # SHA-256 of the client's key: the key itself is never stored (nor logged).
    sa.Column("key_hash", sa.Text, primary_key=True),
    # HMAC-SHA-256 of the request body keyed with the client's key: tells "same request" from "reused key".
    sa.Column("fingerprint", sa.Text, nullable=False),
    sa.Column("response", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Index("idempotency_keys_created_at_idx", "created_at"),
)

verify_email_resends = sa.Table(
    "verify_email_resends",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column(
        "username", sa.String(100), sa.ForeignKey("users.username", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
    sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Index("verify_email_resends_user_time_idx", "username", "requested_at"),
)

# The worker's record of each signup notice it sent (SendSignupNotice), by message id: one email per message.
sent_notices = sa.Table(
    "sent_notices",
    metadata,
    sa.Column("event_id", UUID(as_uuid=True), primary_key=True),
    sa.Column(
        "username", sa.String(100), sa.ForeignKey("users.username", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

dead_letter_actions = sa.Table(
    "dead_letter_actions",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    # The Dramatiq message id: the outbox event id for an outbox event.
    sa.Column("message_id", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),  # replayed | discarded
    sa.Column("operator", sa.Text, nullable=False),
    # The dead letter's last error when it was acted on (its own record goes with it).
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("acted_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Index("dead_letter_actions_message_idx", "message_id"),
)

# Every attempt the worker made to send an email (services/worker/attempts.py): a signup's timeline shows
# them. No address, no code: the SMTP reply's text is masked and cut to 200 characters.
email_attempts = sa.Table(
    "email_attempts",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("event_id", UUID(as_uuid=True), nullable=False),  # the message id
    sa.Column("attempt", sa.Integer, nullable=False),  # 1 for the message's first attempt
    sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("outcome", sa.String(16), nullable=False),  # sent | deferred | rejected | failed
    sa.Column("smtp_code", sa.SmallInteger),
    sa.Column("detail", sa.String(200)),
    sa.Index("email_attempts_event_idx", "event_id", "attempt"),
    sa.Index("email_attempts_attempted_at_idx", "attempted_at"),
)

# Constraint names the API maps to the field a 409 names (see migrations/versions/0001_initial.py).
USERNAME_TAKEN_CONSTRAINT = "users_pkey"
EMAIL_TAKEN_CONSTRAINT = "users_email_lower_key"
IDEMPOTENCY_KEY_TAKEN_CONSTRAINT = "idempotency_keys_pkey"


def asyncpg_dsn(database_url: str) -> str:
    """The URL as plain asyncpg wants it: ``postgresql://…``."""
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql://" + database_url.removeprefix(prefix)
    return database_url


def sqlalchemy_url(database_url: str) -> str:
    """The URL as SQLAlchemy's asyncio engine wants it: ``postgresql+asyncpg://…``."""
    return asyncpg_dsn(database_url).replace("postgresql://", "postgresql+asyncpg://", 1)


POOL_SIZE = 10
"""A service's pooled connections, and as many again in overflow: at most ``2 * POOL_SIZE`` at once."""


def create_engine(
    database_url: str, *, pool_size: int = POOL_SIZE, connect_timeout_s: float = 5.0, pre_ping: bool = True
) -> AsyncEngine:
    """An asyncio engine; it connects lazily, on first use.

    ``pre_ping`` lets a process survive a PostgreSQL restart: a dead pooled connection is replaced instead
    of failing the next request, for three round trips on every checkout. A caller that retries on a
    connection that died pooled (the worker's actors, the API's resends) turns it off.
    """
    return create_async_engine(
        sqlalchemy_url(database_url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=pre_ping,
        # Parameters hold password hashes and email addresses: keep them out of exception text (and logs).
        hide_parameters=True,
        pool_timeout=connect_timeout_s,
        connect_args={"timeout": connect_timeout_s},
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


# SQLSTATE classes meaning "the database cannot serve now", not "the statement is wrong": 08 connection
# exception, 53 insufficient resources (too many connections), 57 operator intervention. The soak found
# 57P03 ("the database system is not yet accepting connections", while PostgreSQL recovers from a crash):
# asyncpg raises it as a plain DBAPIError, which the API answered with a 500.
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57")


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database is down, restarting or out of connections (worth a retry)."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout | OSError | TimeoutError):
        return True
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        return exc.connection_invalidated or sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES
    return False
