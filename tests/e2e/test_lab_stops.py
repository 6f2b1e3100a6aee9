"""``signup bench`` and ``signup soak`` stop on SIGTERM or SIGINT to their main process with nothing left
behind: each runs its services in process groups of their own, which no signal to it reaches, so the
command itself must stop them (a supervisor's SIGTERM; a shell's background job ignores SIGINT)."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from pathlib import Path

import asyncpg
import pytest

from tests.support import (
    PG_ADMIN_URL,
    RedisServer,
    missing_service,
    processes_marked,
    start_signup,
    wait_until,
)

# Slow: CI runs it once, on the host.
pytestmark = pytest.mark.slow

COMMANDS = {
    # The first stack of section 1: a fresh database, a private Redis, api, relay and worker.
    "bench": ("bench", "--quick", "--only", "latency", "--out-dir"),
    # Its own PostgreSQL and Redis, then the services; far fewer signups than a real soak.
    "soak": ("soak", "--signups", "200", "--rate", "2", "--out"),
}


def worker_running(marker: str) -> bool:
    """Whether a ``signup worker`` of the run is up: its stack has started every service."""
    for pid in processes_marked(marker):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # exited while we looked
        if b"worker" in argv:
            return True
    return False


async def lab_databases() -> set[str]:
    connection = await asyncpg.connect(PG_ADMIN_URL)
    try:
        rows = await connection.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'lab\\_%'")
    finally:
        await connection.close()
    return {row["datname"] for row in rows}


@pytest.mark.parametrize(
    ("command", "signum"),
    [("bench", signal.SIGTERM), ("soak", signal.SIGINT)],
    ids=["bench-SIGTERM", "soak-SIGINT"],
)
async def test_a_signal_to_the_main_process_stops_every_service_it_started(
    tmp_path: Path, database_url: str, command: str, signum: int
) -> None:
    if not RedisServer.available():
        missing_service("redis-server is not installed")
    marker = f"SIGNUP_TEST_RUN_{uuid.uuid4().hex}"
    databases = await lab_databases()
    env = {marker: "1", "DATABASE_URL": database_url}
    run = start_signup(*COMMANDS[command], str(tmp_path / "out"), env=env, log_dir=tmp_path)
    try:
        wait_until(lambda: worker_running(marker), timeout=120, what="the run's services")
        assert run.pid is not None
        os.kill(run.pid, signum)
        assert run.wait(timeout=120) == 130, run.output()[-2000:]
    finally:
        run.kill()
        left = processes_marked(marker)
        for pid in left:  # so that a failure here leaves nothing running for the next test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert left == []
    assert await lab_databases() <= databases
