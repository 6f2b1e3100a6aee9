"""A whole system for one experiment: its own database, Redis, SMTP sink and ``signup`` processes.

``Stack`` creates a fresh database (migrated, dropped at the end), a private ``redis-server`` it can stop
and start, an in-process SMTP sink (``lab.harness.smtp``), and runs ``signup api``, ``signup relay`` and
``signup worker`` as real subprocesses configured through the environment, each logging JSON to its own
file; with a course strategy or an injected fault (``lab.strategies``) the API and the worker start through
``python -m lab.strategies`` instead. Readiness is polled, never slept for. ``generate_load``
(``lab.harness.load``) sends the signups::

    env = {"TASK_PROCESS_IN_MS": "1000"}
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    async with Stack(work_dir=Path("var/lab/x"), pg_admin_url=admin, strategy="fixed_delay", env=env) as s:
        signups = await generate_load(s.api_url, rate=5, duration_s=10, prefix="x")
        s.kill("worker"); await s.restart("worker")
        s.redis.stop(); s.redis.start()
        deliveries = s.sink.snapshot()
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import httpx
import redis

from lab.harness.database import drop_database, with_database
from lab.harness.polling import wait_for
from lab.harness.processes import Process, free_port, signup_process
from lab.harness.queues import heartbeats_since
from lab.harness.redis_server import RedisServer
from lab.harness.smtp import SmtpSink
from lab.strategies.knobs import KNOB_NAMES, knobs_set
from shared.settings import Settings, setting_names

SERVICES = ("api", "relay", "worker")
LAB_SERVICES = ("api", "worker")
"""The processes the knobs of ``lab.strategies`` reach."""
RELAY_SILENT_START_S = 3.0


# The lab, the soak and the latency benchmarks measure delivery, not load shedding: their API admits every
# signup however slowly the machine hashes (the overload benchmark puts the production defaults back).
PATIENT_ADMISSION = {
    "API_SIGNUP_MAX_WAITING": "100000",
    "API_SIGNUP_MAX_WAIT_MS": "600000",
    "API_SIGNUP_DEADLINE_MS": "600000",
}
# Their load comes from one address and to the same mailboxes again: no per-client or per-mailbox limits.
NO_CLIENT_LIMITS = {
    "API_CLIENT_SIGNUPS_PER_HOUR": "0",
    "API_CLIENT_RESENDS_PER_HOUR": "0",
    "MAILBOX_MAX_EMAILS_PER_DAY": "0",
}
PRODUCTION_ADMISSION = {name: str(getattr(Settings(), name.lower())) for name in PATIENT_ADMISSION}


def services_environment(
    *, database_url: str, redis_url: str, smtp: tuple[str, int], api_port: int, extra: Mapping[str, str]
) -> dict[str, str]:
    """The environment of ``signup api``, ``relay`` and ``worker`` on these servers: this process's own
    without any setting or knob in it (nothing leaks into the run), JSON logs at info, the patient admission
    and no client limits above, and ``extra`` over all of it."""
    names = {*setting_names(), *KNOB_NAMES}
    base = {k: v for k, v in os.environ.items() if k not in names and not k.startswith("dramatiq_")}
    api_url = f"http://127.0.0.1:{api_port}"
    return {
        **base,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SMTP_HOST": smtp[0],
        "SMTP_PORT": str(smtp[1]),
        "API_HOST": "127.0.0.1",
        "API_PORT": str(api_port),
        "PUBLIC_BASE_URL": api_url,
        "RELAY_METRICS_PORT": "0",
        "WORKER_METRICS_PORT": "0",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "info",
        # An idle Dramatiq consumer sleeps up to this between polls (DESIGN §5): keep latency honest.
        "dramatiq_worker_timeout": "50",
        **PATIENT_ADMISSION,
        **NO_CLIENT_LIMITS,
        **extra,
    }


async def api_ready(api_url: str) -> bool:
    """Whether the API at ``api_url`` answers ``/readyz`` with 200."""
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            return (await client.get(f"{api_url}/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


async def worker_polling(redis_url: str, *, since: float) -> bool:
    """Whether a worker's consumers have polled Redis since ``since`` (wall clock): every Dramatiq broker
    command records a heartbeat, and before the load only consumers issue any."""
    try:
        return bool(await asyncio.to_thread(heartbeats_since, redis_url, since))
    except redis.RedisError:
        return False


class Stack:
    """One experiment's servers and processes. Use as ``async with``; ``close()`` leaves nothing behind.

    ``pg_admin_url`` is the PostgreSQL server's maintenance database, where the stack creates (and at the
    end drops) a database of its own. ``env`` adds or overrides settings and the knobs of ``lab.strategies``
    (``TASK_PROCESS_IN_MS``, ``FAULT_*`` …) for every service; ``services`` chooses which processes run (the
    course's strategies need no relay).
    """

    def __init__(
        self,
        *,
        work_dir: Path,
        strategy: str = "outbox",
        env: Mapping[str, str] | None = None,
        services: tuple[str, ...] = SERVICES,
        smtp_fail_ratio: float = 0.0,
        pg_admin_url: str,
    ) -> None:
        self.work_dir = work_dir
        work_dir.mkdir(parents=True, exist_ok=True)
        self.db_name = f"lab_{uuid.uuid4().hex[:12]}"
        self._pg_admin_url = pg_admin_url
        self.database_url = with_database(pg_admin_url, self.db_name)
        self.redis = RedisServer(data_dir=work_dir / "redis")
        self.sink = SmtpSink(fail_ratio=smtp_fail_ratio)
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.env = services_environment(
            database_url=self.database_url,
            redis_url=self.redis.url,
            smtp=(self.sink.host, self.sink.port),
            api_port=self.api_port,
            extra={"DISPATCH_STRATEGY": strategy, **(env or {})},
        )
        knobs = knobs_set(self.env)
        self.services: dict[str, Process] = {
            name: signup_process(name, env=self.env, log_dir=work_dir, lab=knobs and name in LAB_SERVICES)
            for name in services
        }

    async def __aenter__(self) -> Stack:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Database, Redis, sink, then every service; returns once each is ready. Raises ``TimeoutError``."""
        await self._migrate()
        await asyncio.to_thread(self.redis.start)
        self.sink.start()
        for name in self.services:
            await self.restart(name)

    async def _migrate(self) -> None:
        # A subprocess, not shared.migrate in this process: Alembic's context is process-global, so stacks
        # started concurrently in one event loop would interleave their migrations on one connection.
        log = self.work_dir / "migrate.log"
        with log.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "signup_cli.main", "migrate", env=self.env, stdout=out, stderr=out
            )
            if await process.wait() != 0:
                raise RuntimeError(f"signup migrate failed for {self.db_name}; see {log}")

    async def restart(self, name: str, *, within_s: float = 60) -> None:
        """Start service ``name`` (again, after ``kill``/``stop``) and wait until it is ready."""
        service = self.services[name]
        service.start()
        await wait_for(lambda: self._ready(service), timeout=within_s, what=f"signup {name} to be ready")

    def kill(self, name: str) -> None:
        """SIGKILL service ``name`` and every process it forked."""
        self.services[name].kill()

    def stop(self, name: str) -> None:
        """SIGTERM service ``name`` and wait for it to exit."""
        self.services[name].stop()

    async def _ready(self, service: Process) -> bool:
        if not service.running:
            tail = "\n".join(service.log_lines()[-20:])
            raise RuntimeError(f"signup {service.name} exited while starting; log tail:\n{tail}")
        if service.name == "api":
            return await api_ready(self.api_url)
        if service.name == "worker":
            return await worker_polling(self.redis.url, since=service.started_at)
        # The relay has no endpoint of its own (RELAY_METRICS_PORT=0): ready once it has logged something,
        # or has stayed up for a few seconds (a relay may start silently).
        return service.logged_since_start() or time.time() - service.started_at > RELAY_SILENT_START_S

    async def close(self) -> None:
        """Stop every service (SIGTERM, then SIGKILL), the sink and Redis, and drop the database.

        A cancellation (Ctrl-C) does not cut the clean-up short: it is re-raised once nothing is left running.
        """
        cleanup = asyncio.ensure_future(self._close())
        cancelled = False
        while not cleanup.done():
            try:
                await asyncio.shield(cleanup)
            except asyncio.CancelledError:
                cancelled = True
        cleanup.result()
        if cancelled:
            raise asyncio.CancelledError

    async def _close(self) -> None:
        for service in self.services.values():
            await asyncio.to_thread(service.stop)
        self.sink.stop()
        await asyncio.to_thread(self.redis.stop)
        await drop_database(self._pg_admin_url, self.db_name)
