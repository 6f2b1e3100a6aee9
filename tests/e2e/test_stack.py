"""The lab harness on real processes: start, kill -9, restart, Redis outage, and nothing left behind."""

from __future__ import annotations

import os
from pathlib import Path

import aiosmtplib
import asyncpg
import pytest

from lab.harness.database import admin_url, committed_users
from lab.harness.load import generate_load
from lab.harness.smtp import SmtpSink
from lab.harness.stack import Stack
from tests.support import RedisServer, missing_service


def group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_stack_runs_kills_restarts_and_cleans_up(tmp_path: Path, database_url: str) -> None:
    if not RedisServer.available():
        missing_service("redis-server is not installed")
    admin = admin_url(database_url)
    stack = Stack(work_dir=tmp_path, strategy="immediate", services=("api",), pg_admin_url=admin)
    async with stack:
        ok = await generate_load(stack.api_url, rate=4, duration_s=0.5, prefix="stack")
        assert [s.status for s in ok] == [200, 200]
        assert set(await committed_users(stack.database_url)) == {"stack_0", "stack_1"}

        first = stack.services["api"].pid
        assert first is not None
        stack.kill("api")
        assert not group_alive(first)
        await stack.restart("api")

        stack.redis.stop()
        down = await generate_load(stack.api_url, rate=4, duration_s=0.5, prefix="down")
        stack.redis.start()
        assert [s.status for s in down] == [503, 503]
        pids = [p.pid for p in (stack.services["api"], stack.redis)]
    assert all(pid is not None and not group_alive(pid) for pid in pids)
    assert stack.services["api"].log_lines(), "the API's output is captured"
    connection = await asyncpg.connect(admin)
    try:
        assert not await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", stack.db_name)
    finally:
        await connection.close()


async def test_sink_refuses_the_injected_share_and_records_the_rest() -> None:
    sink = SmtpSink(fail_ratio=1.0)

    async def send(message_id: str) -> None:
        await aiosmtplib.send(
            f"Message-ID: {message_id}\r\n\r\nhi",
            sender="a@lab.example",
            recipients=["B@lab.example"],
            hostname=sink.host,
            port=sink.port,
        )

    sink.start()
    try:
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await send("<x@lab>")
        assert refused.value.code == 451
        sink.fail_ratio = 0.0
        await send("<y@lab>")
    finally:
        sink.stop()
    [delivery] = sink.snapshot()
    assert (delivery.recipients, delivery.message_id) == (("b@lab.example",), "<y@lab>")
    assert (len(sink.attempts), sink.refused) == (2, 1)
