"""The Procrastinate peer of ``signup worker``, for section 10 of ``signup bench``: one task that sends the
verification email of a signup, as ``lab.bench.peer`` defers it.

``python -m procrastinate --app lab.bench.peer_app.app worker --concurrency 8`` runs it in a process of its
own, configured by the environment: ``PEER_DATABASE_URL`` (a libpq URL), ``SMTP_HOST``, ``SMTP_PORT`` and
``PUBLIC_BASE_URL``. Per email the task does what the product's handler does, in plain SQL on psycopg:
create the user's ``verify_emails`` row with a fresh code (one autocommit statement), then in one
transaction lock that row, send over SMTP and mark it sent. The SMTP connections are kept open and reused
(at most one per job running at once), like the product's mailer; there is no retry classification, no
template engine (a plain-text body) and no metrics or logging per email.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any
from urllib.parse import urlencode

import aiosmtplib
import procrastinate
from psycopg_pool import AsyncConnectionPool

from shared.keys import code_digest

DATABASE_ENV = "PEER_DATABASE_URL"
TASK = "send_verify_email"
QUEUE = "emails"
CONCURRENCY = 8
"""The worker's ``--concurrency``: jobs run at once, each on its own database and SMTP connection."""
TTL_MINUTES = 15  # the product's default VERIFY_EMAIL_TTL_MINUTES

_CREATE_ROW = """
INSERT INTO verify_emails (username, email, code_sha256, event_id, expired_at)
SELECT username, email, %(code)s, %(event)s, now() + make_interval(mins => %(ttl)s)
FROM users WHERE username = %(username)s AND NOT is_email_verified
RETURNING id
"""
_LOCK_ROW = """
SELECT v.id, v.email, v.code_sha256, v.sent_at, u.full_name
FROM verify_emails v JOIN users u USING (username) WHERE v.id = %(id)s FOR UPDATE OF v
"""
_MARK_SENT = (
    "UPDATE verify_emails SET sent_at = now(), expired_at = now() + make_interval(mins => %(ttl)s) "
    "WHERE id = %(id)s"
)


@dataclass
class SmtpClients:
    """Open SMTP connections to ``host:port``, each reused by the next send once its send is done."""

    host: str
    port: int
    idle: list[aiosmtplib.SMTP] = field(default_factory=list)

    async def send(self, message: EmailMessage) -> None:
        client = self.idle.pop() if self.idle else None
        if client is None or not client.is_connected:
            client = aiosmtplib.SMTP(hostname=self.host, port=self.port, timeout=10)
            await client.connect()
        try:
            await client.send_message(message)
        except BaseException:
            client.close()
            raise
        self.idle.append(client)


@dataclass
class _Resources:
    database: AsyncConnectionPool[Any]
    smtp: SmtpClients
    base_url: str


_opened: list[_Resources] = []
_opening = asyncio.Lock()


async def _resources() -> _Resources:
    """This process's database pool and SMTP connections, made by the first job (on the worker's loop)."""
    async with _opening:
        if not _opened:
            database: AsyncConnectionPool[Any] = AsyncConnectionPool(
                os.environ[DATABASE_ENV],
                min_size=1,
                max_size=CONCURRENCY,
                open=False,
                kwargs={"autocommit": True},
            )
            await database.open(wait=True, timeout=30)
            smtp = SmtpClients(os.environ["SMTP_HOST"], int(os.environ["SMTP_PORT"]))
            _opened.append(_Resources(database, smtp, os.environ.get("PUBLIC_BASE_URL", "http://localhost")))
        return _opened[0]


async def send_verify_email(username: str) -> None:
    """Email ``username`` a verification link, unless the user is missing or already verified."""
    resources = await _resources()
    async with resources.database.connection() as connection:
        code = secrets.token_urlsafe(32)
        created = await connection.execute(
            _CREATE_ROW,
            {"code": code_digest(code), "event": uuid.uuid4(), "ttl": TTL_MINUTES, "username": username},
        )
        row_id = await created.fetchone()
        if row_id is None:
            return
        async with connection.transaction():
            row = await (await connection.execute(_LOCK_ROW, {"id": row_id[0]})).fetchone()
            if row is None or row[3] is not None:
                return
            query = urlencode({"email_id": row[0], "secret_code": code})
            message = EmailMessage()
            message["From"] = "Signup <no-reply@signup.local>"
            message["To"] = row[1]
            message["Subject"] = "Verify your email address"
            message["Message-ID"] = make_msgid(domain="signup-peer")
            message.set_content(
                f"Hello {row[4]},\n\nopen {resources.base_url.rstrip('/')}/v1/verify_email?{query} "
                f"within {TTL_MINUTES} minutes to verify your address.\n"
            )
            await resources.smtp.send(message)
            await connection.execute(_MARK_SENT, {"id": row[0], "ttl": TTL_MINUTES})


def build_app(conninfo: str) -> procrastinate.App:
    """A Procrastinate app on ``conninfo`` (libpq URL) with the one task, ``TASK`` on queue ``QUEUE``."""
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))
    app.task(name=TASK, queue=QUEUE)(send_verify_email)
    return app


app = build_app(os.environ.get(DATABASE_ENV, ""))
"""What the worker's ``--app`` names; it reads ``PEER_DATABASE_URL`` when imported."""
