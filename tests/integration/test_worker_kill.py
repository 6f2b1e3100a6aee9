"""``signup worker`` killed with SIGKILL in the middle of an SMTP exchange: the email still goes, once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from shared.broker import CLAIM_INTERVAL_MS, HEARTBEAT_TIMEOUT_MS, create_broker
from shared.database import verify_emails
from shared.settings import Settings
from tests.support import Process, SmtpSink, add_user, start_signup, verify_message, wait_for


class StallingSink(SmtpSink):
    """Holds the first DATA reply long enough for the test to kill the worker mid-send."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if not self.attempts:
            self.attempts.append(time.time())
            await asyncio.sleep(20)
            return "451 4.3.0 stalled"
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def stalling_sink() -> Iterator[StallingSink]:
    sink = StallingSink()
    sink.start()
    yield sink
    sink.stop()


def start_worker(settings: Settings, sink: SmtpSink, log_dir: Path) -> Process:
    """``signup worker`` in a process group of its own, which ``Process.kill`` kills as a whole."""
    env = {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "SMTP_HOST": sink.host,
        "SMTP_PORT": str(sink.port),
        "WORKER_METRICS_PORT": "0",
        "WORKER_THREADS": "2",
        "LOG_FORMAT": "json",
    }
    return start_signup("worker", env=env, log_dir=log_dir)


async def test_a_killed_worker_s_message_is_delivered_once(settings, db, stalling_sink, tmp_path) -> None:
    await add_user(db)
    first = start_worker(settings, stalling_sink, tmp_path)
    second = None
    try:
        broker = create_broker(settings)
        broker.enqueue(verify_message())
        broker.close()

        async def stalled() -> bool:
            return bool(stalling_sink.attempts)

        await wait_for(stalled, timeout=30, what="the first worker to reach DATA")
        first.kill()  # SIGKILL to the worker and anything it started, as a machine failure would
        killed_at = time.monotonic()
        second = start_worker(settings, stalling_sink, tmp_path)

        async def sent() -> list[Any]:
            async with db.connect() as connection:
                query = sa.select(verify_emails).where(verify_emails.c.sent_at.is_not(None))
                return list((await connection.execute(query)).all())

        rows = await wait_for(sent, timeout=60, what="redelivery to the second worker")
        print(f"redelivered {time.monotonic() - killed_at:.1f} s after the kill")
        # The heartbeat timeout, then at most one look for dead consumers, a worker start and slack.
        assert time.monotonic() - killed_at < (HEARTBEAT_TIMEOUT_MS + CLAIM_INTERVAL_MS + 1000) / 1000 + 15
        assert len(rows) == 1 and len(stalling_sink.received) == 1
    finally:
        first.kill()
        if second is not None:
            second.stop(timeout=30)
