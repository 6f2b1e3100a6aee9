"""Fixtures for every test layer.

Integration and e2e tests run against real servers: a fresh PostgreSQL database per test session, built by
running the Alembic migrations (so the migrations are tested too), a private redis-server on a free port
(so that tests can stop it, and parallel runs do not share queues), and an aiosmtpd server in-process.
Without a server they skip on a laptop and fail when ``CI`` is set.
"""

from __future__ import annotations

import concurrent.futures.thread
import os
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TextIO, cast

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from lab.harness.database import drop_database, with_database
from shared.database import create_engine
from shared.logging import configure_logging
from shared.migrate import migrate
from shared.settings import Settings, load_settings
from tests.support import PG_ADMIN_URL, LogTee, RedisServer, SmtpSink, missing_service

# The server's maintenance database, where each session (and some tests) create databases of their own.
# docker-compose.yml's test service sets it; the lab and the bench derive theirs from DATABASE_URL.


_LEFTOVER_THREADS: list[threading.Thread] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A test that leaves a non-daemon thread running (a worker never stopped) fails the run loudly.

    Such a thread keeps the interpreter from exiting: the run would hang until CI's limit instead of
    reporting which test leaked it.
    """
    # An executor's threads are not daemons either, but concurrent.futures joins them at exit.
    pooled = getattr(concurrent.futures.thread, "_threads_queues", {})
    _LEFTOVER_THREADS.extend(
        thread
        for thread in threading.enumerate()
        if thread is not threading.main_thread()
        and thread.is_alive()
        and not thread.daemon
        and thread not in pooled
    )
    if _LEFTOVER_THREADS:
        print(f"\nFAILED: threads left running by the tests: {_LEFTOVER_THREADS}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    if _LEFTOVER_THREADS:  # they would block the interpreter's exit: end the process with the failure
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(pytest.ExitCode.TESTS_FAILED)


@pytest.fixture(scope="session", autouse=True)
def log_tee() -> LogTee:
    """Route every in-process log line of the session into memory, in production's JSON format."""
    tee = LogTee()
    configure_logging(service="api", log_format="json", log_level="debug", stream=cast(TextIO, tee))
    return tee


@pytest.fixture
def sensitive() -> list[str]:
    """Values a test used that must never be logged (passwords, hashes, codes, raw emails)."""
    return []


@pytest.fixture(autouse=True)
def no_sensitive_values_in_logs(log_tee: LogTee, sensitive: list[str]) -> Iterator[None]:
    """After each test, fail it if any value it registered in ``sensitive`` reached a log line."""
    start = len(log_tee.lines)
    yield
    leaked = [
        (value, line) for line in log_tee.lines[start:] for value in sensitive if value and value in line
    ]
    assert not leaked, f"sensitive values reached the logs: {leaked[:3]}"


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    """A new database, migrated to head, dropped at the end of the session."""
    try:
        admin = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        missing_service(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    await admin.close()
    name = f"signup_test_{uuid.uuid4().hex[:10]}"
    url = with_database(PG_ADMIN_URL, name)
    try:
        await migrate(url)
        yield url
    finally:
        await drop_database(PG_ADMIN_URL, name)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    if not RedisServer.available():
        missing_service("redis-server is not installed")
    server = RedisServer(durable=False)  # no test restarts Redis expecting its messages back
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
def sink(smtp_sink: SmtpSink) -> SmtpSink:
    """The session's SMTP sink, emptied for this test."""
    smtp_sink.clear()
    return smtp_sink


@pytest.fixture
def settings(database_url: str, redis_server: RedisServer, smtp_sink: SmtpSink) -> Settings:
    """Settings for the real test servers; tests derive variants with ``msgspec.structs.replace``."""
    return load_settings(
        {},
        database_url=database_url,
        redis_url=redis_server.url,
        smtp_host=smtp_sink.host,
        smtp_port=smtp_sink.port,
        relay_metrics_port=0,
        worker_metrics_port=0,
        log_level="debug",
        # Every test's client is one address and many tests sign up more than a client may: the limits'
        # own tests turn them on.
        api_client_signups_per_hour=0,
        api_client_resends_per_hour=0,
        mailbox_max_emails_per_day=0,
    )


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def db(engine: AsyncEngine, redis_server: RedisServer) -> AsyncEngine:
    """An empty database and an empty Redis for this test."""
    async with engine.begin() as connection:
        await connection.execute(
            sa.text(
                "TRUNCATE users, outbox, verify_emails, idempotency_keys, mailbox_sends, "
                "dead_letter_actions RESTART IDENTITY CASCADE"
            )
        )
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_server.url)
    await client.flushdb()
    await client.aclose()
    return engine
