"""The one module test modules import helpers from (besides tools: e2e/cdp.py, certificates.py).

The tests run on the same harness as ``signup lab``, ``bench`` and ``soak`` (lab/harness/): one launcher of
processes (``Process``, ``signup_process``), one private redis-server class, one SMTP sink, one pair of
polling helpers, one reader of Dramatiq's Redis keys. What is here besides is what only the tests need; no
test module imports from another test module or from a conftest.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import secrets
import subprocess
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.message import Message as Email
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import sqlalchemy as sa
import uvicorn
from dramatiq import Message, Worker
from litestar import Litestar
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.ext.asyncio import AsyncEngine

from lab.harness.database import unpublished_rows
from lab.harness.polling import wait_for, wait_until
from lab.harness.processes import Process, free_port, port_open, proc_stats, run_signup, signup_process
from lab.harness.queues import (
    QueuedMessages,
    held_by_workers,
    held_messages,
    nothing_pending,
    queued_messages,
)
from lab.harness.redis_server import RedisServer
from lab.harness.smtp import Delivery, SmtpSink
from lab.harness.stack import api_ready, services_environment, worker_polling
from services.api.app import create_app
from services.relay.relay import Relay, build_relay
from services.worker.actors import Handler, WorkerContext
from services.worker.emails import render_email
from services.worker.handlers import send_verify_email
from services.worker.wiring import build_broker
from shared import messages
from shared.broker import StreamsBroker
from shared.database import asyncpg_dsn, users, verify_emails
from shared.keys import code_digest
from shared.languages import email_languages
from shared.messages import SendVerifyEmail
from shared.settings import Settings, load_settings

__all__ = [
    "Delivery",
    "Process",
    "QueuedMessages",
    "RedisServer",
    "SmtpSink",
    "free_port",
    "held_by_workers",
    "held_messages",
    "nothing_pending",
    "port_open",
    "queued_messages",
    "run_signup",
    "wait_for",
    "wait_until",
]

IN_CI = bool(os.environ.get("CI"))


def missing_service(reason: str) -> None:
    """Skip on a laptop without the service; fail in CI, where a skipped test would hide a broken set-up."""
    if IN_CI:
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _proc_stats() -> list[tuple[int, int, int, str]]:
    """(pid, ppid, pgid, state) of every process, read from /proc."""
    return [(pid, int(f[1]), int(f[2]), f[0]) for pid, f in proc_stats().items()]


def processes_marked(marker: str) -> list[int]:
    """Pids of running processes whose environment holds the variable ``marker`` (children inherit it)."""
    needle = f"{marker}=".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()  # empty for a zombie
        except OSError:
            continue  # exited while we looked
        if any(item.startswith(needle) for item in environ.split(b"\0")):
            found.append(int(entry.name))
    return found


def running_in_groups(groups: set[int]) -> list[int]:
    """Pids of processes in ``groups`` that are still running (zombies waiting to be reaped do not count)."""
    return [pid for pid, _, pgid, state in _proc_stats() if pgid in groups and state != "Z"]


def start_signup(
    *args: str, env: Mapping[str, str], log_dir: Path, lab: bool = False, cwd: Path | None = None
) -> Process:
    """Start ``signup ARGS`` through the one launcher (``lab.harness.processes``), with ``env`` over the
    current environment, in a process group of its own, logging to a file of its own in ``log_dir``; with
    ``lab``, through ``lab.strategies``, which reads the lab's knobs (an injected fault) from ``env``."""
    name = f"signup-{args[0]}-{time.monotonic_ns()}"
    process = signup_process(
        *args, env={**os.environ, **env}, log_dir=log_dir, log_name=name, lab=lab, cwd=cwd
    )
    process.start()
    return process


# --- The session: the PostgreSQL server to create databases on, and the log every process writes ----------

PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


class LogTee(io.TextIOBase):
    """Everything the processes in this test session log, kept for the tests that read it."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.lines.extend(line for line in text.splitlines() if line)
        return len(text)


# --- The API in this process: served by uvicorn, and its resends waited for -------------------------------


async def resends_done(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    """Wait until the resend requests ``client``'s app answered have run (they run after their answer, on
    the app's own event loop: the test client's)."""

    async def idle() -> bool:
        return bool(client.app.state.resends.pending == 0)

    await wait_for(idle, timeout=10, what="the queued resends to run")


@contextlib.asynccontextmanager
async def serving(settings: Settings, app: Litestar | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """The real app under uvicorn on a free port, in this event loop, and a client for it.

    Litestar's test client runs one request at a time; this serves requests concurrently, as production does,
    and a client can really go away.
    """
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app or create_app(settings), host="127.0.0.1", port=port, log_config=None, access_log=False
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:

            async def up() -> bool:
                return server.started

            await wait_for(up, timeout=10, what="uvicorn to start")
            yield http
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=15)


# --- The relay: bulk outbox rows, relays in this process, the outbox's state ------------------------------

INSERT_ROWS = """
INSERT INTO outbox (event_id, actor, queue, payload, trace_id, available_at)
SELECT gen_random_uuid(), 'send_verify_email', 'critical',
       jsonb_build_object('username', 'user_' || g), 'trace-' || g,
       now() + make_interval(secs => $2::float8)
FROM generate_series(1, $1) AS g
RETURNING event_id::text
"""


async def connect(settings: Settings) -> Any:
    return await asyncpg.connect(asyncpg_dsn(settings.database_url))


async def insert_rows(connection: Any, count: int, *, due_in_s: float = 0.0) -> list[str]:
    """Insert ``count`` outbox rows in one statement (in ``connection``'s transaction, if any)."""
    return [r["event_id"] for r in await connection.fetch(INSERT_ROWS, count, due_in_s)]


async def add_rows(settings: Settings, count: int, *, due_in_s: float = 0.0) -> list[str]:
    connection = await connect(settings)
    try:
        return await insert_rows(connection, count, due_in_s=due_in_s)
    finally:
        await connection.close()


async def unpublished(settings: Settings) -> int:
    return await unpublished_rows(settings.database_url)


async def all_published(settings: Settings) -> bool:
    return await unpublished(settings) == 0


async def fetch(settings: Settings, query: str, *args: Any) -> list[Any]:
    connection = await connect(settings)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def running_relay(settings: Settings, **options: Any) -> AsyncIterator[Relay]:
    """A relay running as a task of this event loop; stopped (and checked not to have crashed) on exit."""
    overrides = {k: options.pop(k) for k in list(options) if k in Settings.__struct_fields__}
    relay = build_relay(msgspec.structs.replace(settings, **overrides), **options)
    task = asyncio.create_task(relay.run())
    try:
        yield relay
        assert not task.done(), f"the relay stopped on its own: {task}"
    finally:
        relay.stop()
        await asyncio.wait_for(task, timeout=30)


@contextlib.asynccontextmanager
async def running_relays(settings: Settings, count: int, **options: Any) -> AsyncIterator[list[Relay]]:
    """``count`` relays running at once in this event loop."""
    async with contextlib.AsyncExitStack() as exits:
        yield [
            await exits.enter_async_context(running_relay(settings, **dict(options))) for _ in range(count)
        ]


# --- Signups and row counts -------------------------------------------------------------------------------


def signup_body(
    username: str = "alice", email: str = "alice@example.com", **extra: object
) -> dict[str, object]:
    return {
        "username": username,
        "full_name": "Alice Liddell",
        "email": email,
        "password": "correct horse",
        **extra,
    }


async def count(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


# --- Verification links written straight to the database --------------------------------------------------


async def add_link(engine: AsyncEngine, *, expires_in: timedelta = timedelta(minutes=15)) -> tuple[int, str]:
    code = secrets.token_urlsafe(32)
    async with engine.begin() as connection:
        await connection.execute(
            users.insert().values(
                username="alice", hashed_password="x", full_name="Alice", email="alice@example.com"
            )
        )
        email_id = (
            await connection.execute(
                verify_emails.insert()
                .values(
                    username="alice",
                    email="alice@example.com",
                    code_sha256=code_digest(code),
                    event_id=uuid.uuid4(),
                    expired_at=datetime.now(UTC) + expires_in,
                )
                .returning(verify_emails.c.id)
            )
        ).scalar_one()
    return int(email_id), code


async def is_verified(engine: AsyncEngine) -> bool:
    async with engine.connect() as connection:
        return bool((await connection.execute(sa.select(users.c.is_email_verified))).scalar_one())


# --- The worker in this process, its messages, and what it logged -----------------------------------------


@contextmanager
def running_worker(
    settings: Settings, *, handlers: Mapping[type[messages.Message], Handler] | None = None
) -> Iterator[StreamsBroker]:
    """The real worker (broker, middleware, actor) in this process, polling every 50 ms."""
    broker, _ = build_broker(settings, handlers=handlers)
    worker = Worker(broker, worker_timeout=50, worker_threads=settings.worker_threads)
    worker.start()
    try:
        yield broker
    finally:
        worker.stop()
        broker.close()


async def add_user(engine: AsyncEngine, username: str = "alice") -> str:
    email = f"{username}@example.com"
    async with engine.begin() as connection:
        await connection.execute(
            users.insert().values(
                username=username, hashed_password="x", full_name="Alice Liddell", email=email
            )
        )
    return email


def verify_message(
    username: str = "alice", *, message_id: str | None = None, args: tuple[Any, ...] = ()
) -> Message[Any]:
    return Message(
        queue_name="critical",
        actor_name="send_verify_email",
        args=args or ({"username": username},),
        kwargs={},
        options={"trace_id": "trace-w1"},
        message_id=message_id or str(uuid.uuid4()),
    )


def logged(log_tee: LogTee, event: str, *, since: int = 0) -> list[dict[str, Any]]:
    """The JSON log lines with this ``event`` from line ``since`` on (tests share one log)."""
    return [entry for line in log_tee.lines[since:] if (entry := json.loads(line)).get("event") == event]


async def wait_logged(log_tee: LogTee, event: str, *, since: int) -> list[dict[str, Any]]:
    async def probe() -> list[dict[str, Any]]:
        return logged(log_tee, event, since=since)

    return await wait_for(probe, timeout=10, what=f"log event {event!r}")


async def received(sink: SmtpSink) -> list[Delivery]:
    return list(sink.received)


def signup_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """``signup ARGS`` run to its end on ``settings``' database and Redis, through the launcher."""
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "LOG_FORMAT": "json",
    }
    return run_signup(*args, env=env)


# --- The link in a delivered email ------------------------------------------------------------------------

LINK_QUERY = re.compile(r"/v1/verify_email\?email_id=(\d+)&secret_code=([A-Za-z0-9_-]+)")


def link_in(mail: Delivery) -> dict[str, str]:
    text = mail.message.get_payload(0)
    assert isinstance(text, Email)
    body = text.get_payload(decode=True)
    assert isinstance(body, bytes)
    found = LINK_QUERY.search(body.decode())
    assert found, "no link in the email"
    return {"email_id": found.group(1), "secret_code": found.group(2)}


# --- Finished spans ---------------------------------------------------------------------------------------

Spans = Sequence[ReadableSpan]


def named(spans: Spans, name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


async def finished(exporter: InMemorySpanExporter, name: str, count: int = 1) -> Spans:
    """Every finished span, once ``count`` spans called ``name`` have finished."""

    async def probe() -> Spans:
        spans = exporter.get_finished_spans()
        return spans if len(named(spans, name)) >= count else ()

    return await wait_for(probe, timeout=15, what=f"{count} finished {name!r} span(s)")


# --- The link opened in a browser: the page, then its one button ------------------------------------------

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}

FORM = re.compile(r'<form method="post" action="confirm_email">(.*?)</form>', re.S)

FIELD = re.compile(r'<input type="hidden" name="(\w+)" value="([^"]*)">')


async def open_link(client: Any, email_id: int, code: str) -> Any:
    """Open the link in a browser and press the one button the page shows: the page that answers."""
    opened = await client.get(
        "/v1/verify_email", params={"email_id": email_id, "secret_code": code}, headers=BROWSER
    )
    assert opened.status_code == 200 and "<h1>Confirm your email address</h1>" in opened.text
    form = FORM.search(opened.text)
    assert form, "no confirmation form"
    fields = dict(FIELD.findall(form.group(1)))
    return await client.post(
        "/v1/confirm_email", data=fields, headers={**BROWSER, "Sec-Fetch-Site": "same-origin"}
    )


# --- The worker's use case with a mailer that records -----------------------------------------------------


class RecordingMailer:
    def __init__(self) -> None:
        self.sent: list[EmailMessage] = []

    async def send(self, message: EmailMessage) -> None:
        self.sent.append(message)


async def worker_sends(
    db: AsyncEngine, settings, username: str = "alice", *, mailer: RecordingMailer | None = None
) -> RecordingMailer:
    """Run the worker's use case for one new message to ``username``, with a recording mailer (``mailer``:
    one the caller keeps, which then may send nothing)."""
    given = mailer
    mailer = mailer or RecordingMailer()
    async with db.connect() as connection:
        await send_verify_email(
            SendVerifyEmail(username=username),
            context=WorkerContext(settings=settings, mailer=mailer, engine=db),
            message_id=str(uuid.uuid4()),
            connection=connection,
        )
    assert given is not None or len(mailer.sent) == 1
    return mailer


# --- api, relay and worker as real processes --------------------------------------------------------------

EMAIL_LINK = re.compile(rb"(http://\S+/v1/verify_email\?email_id=(\d+)&secret_code=[A-Za-z0-9_-]+)")


class Services:
    """``signup api``, ``relay`` and ``worker`` on the test's database, Redis and sink, started by the one
    launcher (``lab.harness.processes``) in the lab's environment (``lab.harness.stack``)."""

    def __init__(self, settings: Settings, sink: SmtpSink, log_dir: Path) -> None:
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.redis_url = settings.redis_url
        self.log_dir = log_dir
        self.env = services_environment(
            database_url=settings.database_url,
            redis_url=settings.redis_url,
            smtp=(sink.host, sink.port),
            api_port=self.api_port,
            extra={"WORKER_MIN_BACKOFF_MS": "100"},
        )
        self.processes: dict[str, Process] = {}

    def start(self, name: str, **extra: str) -> None:
        process = signup_process(name, env={**self.env, **extra}, log_dir=self.log_dir)
        process.start()
        self.processes[name] = process

    def logs(self, name: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.processes[name].log_lines() if line.startswith("{")]

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop(timeout=20)


async def ready(services: Services, settings: Settings) -> None:
    """Wait until the API answers ``/readyz`` and the worker polls Redis."""
    worker = services.processes["worker"]
    await wait_for(lambda: api_ready(services.api_url), timeout=30, what="the api")
    await wait_for(
        lambda: worker_polling(services.redis_url, since=worker.started_at), timeout=30, what="the worker"
    )


def link_of(message: Email) -> tuple[str, int]:
    text = message.get_payload(0)
    assert isinstance(text, Email)
    body = text.get_payload(decode=True)
    assert isinstance(body, bytes)
    match = EMAIL_LINK.search(body)
    assert match, body
    return match.group(1).decode(), int(match.group(2))


# --- Emails rendered from the templates, in every shipped language --------------------------------------

SETTINGS = load_settings({}, product_name="Zoë & Co., «Ünïcode»")
LINK = "https://signup.example.org/v1/verify_email?email_id=7&secret_code=" + "c" * 43
KINDS = ("verify_email", "signup_notice")
LANGUAGES = sorted(email_languages())
NAMES = {
    "long": "Maximiliane-Wilhelmina Alexandrina von Hohenzollern-Sigmaringen Oberstleutnantstochter Ex",
    "rtl": "زينب عبد الرحمن",
    "nfd": unicodedata.normalize("NFD", "Zoë Ångström José"),
    "markup": "Eve <script>alert(1)</script>",
}


def render(kind: str, language: str, *, full_name: str = "Alice Liddell", **overrides: Any) -> EmailMessage:
    """The email of ``kind`` in ``language`` with sample values; ``overrides`` replace any of them and
    ``settings``, ``to`` and ``message_id``."""
    values: dict[str, Any] = {"username": "alice_liddell"}
    if kind == "verify_email":
        values |= {
            "full_name": full_name,
            "link": LINK,
            "valid_for": timedelta(minutes=15),
            "account_kept_for": timedelta(hours=24),
        }
    settings = overrides.pop("settings", SETTINGS)
    return render_email(
        kind,
        settings=settings,
        to=overrides.pop("to", "alice@example.com"),
        message_id=overrides.pop("message_id", "m-1"),
        language=language,
        **values | overrides,
    )


def parts(message: EmailMessage) -> tuple[str, str]:
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())
