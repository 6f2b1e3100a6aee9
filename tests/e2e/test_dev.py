"""``signup dev`` end to end: the real processes, a signup over HTTP, the email in the mailsink, Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lab.harness.database import drop_database, with_database
from tests.support import (
    PG_ADMIN_URL,
    RedisServer,
    free_port,
    processes_marked,
    start_signup,
    wait_until,
)

# Set in the environment of every process a test run starts, to find them all again in /proc.
MARKER = "SIGNUP_DEV_TEST_RUN"


class Dev:
    """``signup dev`` in a session of its own (the launcher's), started in ``cwd``, its output in a log."""

    def __init__(self, *, env: dict[str, str], cwd: Path) -> None:
        self.process = start_signup("dev", env=env, log_dir=cwd, cwd=cwd)
        assert self.process.pid is not None
        self.pid = self.process.pid

    @property
    def lines(self) -> list[str]:
        return self.process.log_lines()

    def output(self) -> str:
        return self.process.output()

    def left_behind(self) -> list[int]:
        """Every process of this run still running: dev and whatever it started, at any depth."""
        return processes_marked(MARKER)

    def kill(self) -> None:
        """Last resort after a failed test: nothing of this run may outlive it."""
        for pid in self.left_behind():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process.running:
            self.process.wait(timeout=10)


@pytest.fixture
def dev_env(tmp_path: Path, redis_server: RedisServer) -> Iterator[dict[str, str]]:
    """The environment of one run: free ports, a database of its own (dropped after), the private Redis."""
    name = f"signup_dev_{uuid.uuid4().hex[:10]}"
    yield {
        **os.environ,
        "DATABASE_URL": with_database(PG_ADMIN_URL, name),
        "REDIS_URL": redis_server.url,
        "API_HOST": "127.0.0.1",
        "API_PORT": str(free_port()),
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(free_port()),
        "RELAY_METRICS_PORT": "0",
        "WORKER_METRICS_PORT": "0",
        "LOG_FORMAT": "json",
        MARKER: uuid.uuid4().hex,
    }

    asyncio.run(drop_database(PG_ADMIN_URL, name))


def mail_for(address: str, *, out_dir: Path, dev: Dev) -> bool:
    """Whether the mailsink stored (``--out-dir``) or printed a message to ``address``."""
    stored = any(address in path.read_text(errors="replace") for path in out_dir.rglob("*") if path.is_file())
    printed = any(line.startswith("mailsink") and address in line for line in dev.lines)
    return stored or printed


# What each service logs once it handles SIGTERM itself (the API is asked over HTTP).
STARTED = ("relay.started", "worker.started", "mailsink listening")


def dev_ready(dev: Dev, api: str) -> bool:
    assert dev.process.running, f"signup dev exited early:\n{dev.output()[-3000:]}"
    if not all(any(started in line for line in dev.lines) for started in STARTED):
        return False
    try:
        return httpx.get(f"{api}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_dev_runs_a_signup_through_to_the_email_and_ctrl_c_stops_everything(
    dev_env: dict[str, str], tmp_path: Path
) -> None:
    dev = Dev(env=dev_env, cwd=tmp_path)
    try:
        api = f"http://127.0.0.1:{dev_env['API_PORT']}"
        wait_until(lambda: dev_ready(dev, api), timeout=60, interval=0.2, what="the API to be ready")
        user = f"dev_{uuid.uuid4().hex[:8]}"
        address = f"{user}@example.com"
        response = httpx.post(
            f"{api}/v1/create_user",
            json={"username": user, "full_name": "Dev Person", "email": address, "password": "a long secret"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        wait_until(
            lambda: mail_for(address, out_dir=tmp_path / "var" / "mail", dev=dev),
            timeout=5,
            what="the verification email in the mailsink",
        )
        for name in ("migrate", "api", "relay", "worker", "mailsink"):
            assert any(line.startswith(f"{name:<8} |") for line in dev.lines), name

        assert len(dev.left_behind()) >= 5  # dev itself and its four services
        # Ctrl-C signals the terminal's foreground process group; the services have sessions of their own.
        os.killpg(dev.pid, signal.SIGINT)
        assert dev.process.wait(timeout=30) == 0, dev.output()[-3000:]
        assert dev.left_behind() == []
        assert "did not stop" not in dev.output()  # every service stopped on SIGTERM, none was killed
    finally:
        dev.kill()


def test_dev_stops_everything_and_fails_when_a_service_dies(dev_env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(dev_env["API_PORT"])))
        taken.listen()
        # The API cannot bind its port: it exits, and dev must stop the others.
        dev = Dev(env=dev_env, cwd=tmp_path)
        try:
            assert dev.process.wait(timeout=90) != 0
            assert "exited unexpectedly" in dev.output()
            assert dev.left_behind() == []
        finally:
            dev.kill()


def test_a_sigkilled_dev_leaves_no_service_running(dev_env: dict[str, str], tmp_path: Path) -> None:
    """SIGKILL gives ``signup dev`` no chance to stop anything: each service must notice and stop itself."""
    dev = Dev(env=dev_env, cwd=tmp_path)
    try:
        api = f"http://127.0.0.1:{dev_env['API_PORT']}"
        wait_until(lambda: dev_ready(dev, api), timeout=60, interval=0.2, what="the API to be ready")
        assert len(dev.left_behind()) >= 5
        os.kill(dev.pid, signal.SIGKILL)
        dev.process.wait(timeout=10)
        wait_until(lambda: dev.left_behind() == [], timeout=10, what="every service to stop")
    finally:
        dev.kill()


def test_dev_stops_everything_on_sigterm_to_every_process(dev_env: dict[str, str], tmp_path: Path) -> None:
    """As systemd's default ``KillMode=control-group`` does: each service gets SIGTERM twice, from systemd
    and from ``signup dev``."""
    dev = Dev(env=dev_env, cwd=tmp_path)
    try:
        api = f"http://127.0.0.1:{dev_env['API_PORT']}"
        wait_until(lambda: dev_ready(dev, api), timeout=60, interval=0.2, what="every service to start")
        os.kill(dev.pid, signal.SIGTERM)  # the main process first, then the others (as systemd does)
        for pid in dev.left_behind():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        assert dev.process.wait(timeout=30) == 0, dev.output()[-3000:]
        assert dev.left_behind() == []
        assert "did not stop" not in dev.output()
    finally:
        dev.kill()
