"""``signup worker``, ``relay`` and ``api`` stop on SIGTERM or SIGINT, sent to the main process or to its
whole process group (as systemd, honcho or a terminal do), idle or in the middle of a message: exit 0
within 10 s, no process left, and the message in hand sent once or back in Redis at once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.broker import StreamsBroker
from shared.database import verify_emails
from shared.settings import Settings
from tests.support import (
    Process,
    SmtpSink,
    add_user,
    free_port,
    held_by_workers,
    processes_marked,
    queued_messages,
    running_in_groups,
    start_signup,
    verify_message,
    wait_for,
    wait_until,
)

STOP_LIMIT_S = 10.0
# What each service logs once it is running (before that, a signal meets Python's default handlers).
READY = {"worker": "worker.started", "relay": "relay.started", "api": "Application startup complete"}
WAYS = [
    ("group", signal.SIGTERM),
    ("group", signal.SIGINT),
    ("main", signal.SIGTERM),
    ("main", signal.SIGINT),
]
MARKER = "SIGNUP_STOPS_TEST_RUN"  # in every process a test starts, to find any that escaped its group


class HoldingSink(SmtpSink):
    """Holds the reply to the first DATA until ``release`` is set: the worker is mid-message until then."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = threading.Event()
        self.release = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if not self.reached.is_set():
            self.reached.set()
            while not self.release.is_set():
                await asyncio.sleep(0.02)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def holding_sink() -> Iterator[HoldingSink]:
    sink = HoldingSink()
    sink.start()
    yield sink
    sink.release.set()
    sink.stop()


class Service:
    """One ``signup`` service in a session of its own, as a supervisor would run it."""

    def __init__(self, name: str, *, settings: Settings, smtp_port: int, log_dir: Path) -> None:
        self.name = name
        self.marker = uuid.uuid4().hex
        env = {
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp_port),
            "API_HOST": "127.0.0.1",
            "API_PORT": str(free_port()),
            "RELAY_METRICS_PORT": "0",
            "WORKER_METRICS_PORT": "0",
            "WORKER_THREADS": "2",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "info",
            MARKER: self.marker,
        }
        self.signup: Process = start_signup(name, env=env, log_dir=log_dir)
        assert self.signup.pid is not None
        self.pid = self.signup.pid

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.signup.running, f"{self.name} exited:\n{self.signup.output()[-2000:]}"
            return READY[self.name] in self.signup.output()

        wait_until(ready, timeout=30, interval=0.1, what=f"signup {self.name} to start")

    def send(self, way: str, signum: int) -> None:
        if way == "group":
            os.killpg(self.pid, signum)
        else:
            os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = STOP_LIMIT_S) -> tuple[int, float]:
        """The exit code and how long it took; fails the test (and kills the group) past ``timeout``."""
        start = time.monotonic()
        try:
            code = self.signup.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"signup {self.name} still running {timeout}s after the signal:\n{self.tail()}")
        return code, time.monotonic() - start

    def left_behind(self) -> list[int]:
        return sorted(set(running_in_groups({self.pid})) | set(processes_marked(MARKER + "=" + self.marker)))

    def kill(self) -> None:
        self.signup.kill()

    def tail(self) -> str:
        return self.signup.output()[-3000:]


def enqueue_one(redis_url: str) -> str:
    broker = StreamsBroker(url=redis_url)
    try:
        return broker.enqueue(verify_message()).message_id
    finally:
        broker.close()


async def sent_rows(db: AsyncEngine) -> list[Any]:
    async with db.connect() as connection:
        query = sa.select(verify_emails).where(verify_emails.c.sent_at.is_not(None))
        return list((await connection.execute(query)).all())


@pytest.mark.parametrize(("way", "signum"), WAYS, ids=[f"{w}-{s.name}" for w, s in WAYS])
async def test_idle_services_stop(
    way: str, signum: signal.Signals, settings: Settings, db: AsyncEngine, tmp_path: Path
) -> None:
    # The three at once: each is its own process and session, and starting them together halves the time.
    services = [Service(name, settings=settings, smtp_port=free_port(), log_dir=tmp_path) for name in READY]
    try:
        for service in services:
            service.wait_ready()
        for service in services:
            service.send(way, signum)
        for service in services:
            code, took = service.wait_exit()
            assert (code, service.left_behind()) == (0, []), service.tail()
            assert took < STOP_LIMIT_S
    finally:
        for service in services:
            service.kill()


@pytest.mark.parametrize(("way", "signum"), [WAYS[0], WAYS[3]], ids=["group-SIGTERM", "main-SIGINT"])
async def test_the_worker_finishes_the_message_in_hand(
    way: str,
    signum: signal.Signals,
    settings: Settings,
    db: AsyncEngine,
    holding_sink: HoldingSink,
    tmp_path: Path,
) -> None:
    await add_user(db)
    service = Service("worker", settings=settings, smtp_port=holding_sink.port, log_dir=tmp_path)
    try:
        service.wait_ready()
        enqueue_one(settings.redis_url)
        wait_until(holding_sink.reached.is_set, timeout=15, what="the worker to reach DATA")
        service.send(way, signum)
        wait_until(lambda: "worker.stopping" in service.signup.output(), timeout=5, what="the stop to begin")
        holding_sink.release.set()
        code, took = service.wait_exit()
        assert code == 0 and took < STOP_LIMIT_S, service.tail()
        assert service.left_behind() == []
        assert len({mail.message_id for mail in holding_sink.received}) == 1
        assert len(await sent_rows(db)) == 1
        # Acknowledged: nothing waits in Redis, nor for a heartbeat to expire.
        assert queued_messages(settings.redis_url).all == [] and held_by_workers(settings.redis_url) == 0
    finally:
        service.kill()


async def test_a_second_signal_hands_the_message_back_at_once(
    settings: Settings, db: AsyncEngine, holding_sink: HoldingSink, tmp_path: Path
) -> None:
    await add_user(db)
    first = Service("worker", settings=settings, smtp_port=holding_sink.port, log_dir=tmp_path)
    second = None
    try:
        first.wait_ready()
        message_id = enqueue_one(settings.redis_url)
        wait_until(holding_sink.reached.is_set, timeout=15, what="the worker to reach DATA")
        first.send("group", signal.SIGTERM)
        wait_until(lambda: "worker.stopping" in first.signup.output(), timeout=5, what="the stop to begin")
        first.send("main", signal.SIGTERM)
        code, _ = first.wait_exit(timeout=4)  # less than the 5 s the first signal gives the message
        assert code == 0, first.tail()
        assert "stopped without waiting" in first.tail()
        assert first.left_behind() == []
        # Back in the queue right away, held by no worker: the next one takes it without waiting 15 s.
        assert [m.message_id for m in queued_messages(settings.redis_url).ready] == [message_id]
        assert held_by_workers(settings.redis_url) == 0

        holding_sink.release.set()  # its SMTP session is gone: what it held can only be the same mail
        second = Service("worker", settings=settings, smtp_port=holding_sink.port, log_dir=tmp_path)
        await wait_for(lambda: sent_rows(db), timeout=30, what="the second worker to send it")
        assert len({mail.message_id for mail in holding_sink.received}) == 1
    finally:
        first.kill()
        if second is not None:
            second.send("main", signal.SIGTERM)
            assert second.wait_exit()[0] == 0, second.tail()
