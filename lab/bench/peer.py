"""Section 10 of ``signup bench``: the product's outbox beside Procrastinate, side by side in one run.

Procrastinate (a task queue in PostgreSQL) is what a Python team would pick instead of an outbox: the job
row is the outbox row, deferred on the signup's own connection inside its transaction
(``configure(connection=...)``), and its worker fetches jobs from PostgreSQL (LISTEN/NOTIFY, polling as
a fallback) with no relay and no Redis. Both sides run on a ``lab.harness.stack.Stack`` of their own (fresh
migrated database, SMTP sink):

- outbox: the real ``signup api``, ``relay`` and ``worker`` processes, measured by section 1's own code
  (``lab.bench.e2e.commit_to_email``: HTTP signups at a steady rate, latency from the API's post-commit log
  line to the sink's receipt); every worker with section 1's ``dramatiq_worker_timeout``.
- Procrastinate: its schema applied to the stack's database, its worker
  (``python -m procrastinate --app lab.bench.peer_app.app worker``, default settings but ``--concurrency
  8``) in a process of its own, and the signup in this process: the API's argon2id hash of the password
  (so that both sides spend the same CPU before each commit), then one transaction inserting the user row
  and deferring the job, committed; latency from the commit's return to the sink's receipt.

Then, on the same processes, a backlog for each: ``plan.peer_drain`` users, and for each one outbox row (one
INSERT) or one job (batch defers in one transaction), committed at once while the relay and worker, or the
Procrastinate worker, run; timed from that commit to the sink's receipt of the last email. Nothing here
imports the broker layer: the outbox side is reached through the ``signup`` processes and SQL only.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import procrastinate
from procrastinate.types import JSONDict
from psycopg_pool import AsyncConnectionPool

from lab.bench.e2e import WORKER_TIMEOUT_MS, commit_to_email, first_emails
from lab.bench.model import BenchPlan, Section, fmt, ms, ratio
from lab.bench.peer_app import CONCURRENCY, DATABASE_ENV, QUEUE, TASK, build_app
from lab.harness.database import insert_outbox_rows, insert_users
from lab.harness.load import PASSWORD, Signup, email_of
from lab.harness.measure import Latency, latency_of
from lab.harness.polling import wait_for
from lab.harness.processes import Process
from lab.harness.stack import Stack
from services.api.passwords import hash_password
from shared.database import asyncpg_dsn

OUTBOX_ENV = {"dramatiq_worker_timeout": str(WORKER_TIMEOUT_MS)}
_INSERT_USER = "INSERT INTO users (username, hashed_password, full_name, email) VALUES (%s, %s, %s, %s)"
APP = "lab.bench.peer_app.app"
WORKER_OPTIONS = ("--queues", QUEUE, "--concurrency", str(CONCURRENCY))
"""Procrastinate's defaults otherwise: LISTEN/NOTIFY on, a 5 s polling fallback."""
DEFER_CHUNK = 5_000
"""Jobs per batch-defer statement of the backlog (all in one transaction)."""
DRAIN_FLOOR_S, DRAIN_FLOOR_PER_S = 60, 25
"""A backlog must drain at 25 emails/s at least (after 60 s): past that the section fails, not waits on."""


@dataclass
class Peer:
    """The Procrastinate side of a stack: its app (deferring on ``pool``) and its worker process."""

    stack: Stack
    app: procrastinate.App
    pool: AsyncConnectionPool[Any]
    worker: Process

    async def sign_up(self, username: str) -> Signup:
        """Hash, then insert the user and defer its email in one transaction; ``committed_at`` is when the
        commit returned."""
        sent_at = time.time()
        hashed = await hash_password(PASSWORD)
        async with self.pool.connection() as connection, connection.transaction():
            await connection.execute(_INSERT_USER, (username, hashed, "Lab User", email_of(username)))
            await self.app.configure_task(TASK, connection=connection).defer_async(username=username)
        return Signup(username, email_of(username), 200, sent_at, time.time())

    async def backlog(self, count: int) -> float:
        """``count`` jobs for users ``u_1``… deferred in one transaction; the wall-clock time of its
        commit."""
        async with self.pool.connection() as connection:
            async with connection.transaction():
                deferrer = self.app.configure_task(TASK, connection=connection)
                for first in range(1, count + 1, DEFER_CHUNK):
                    last = min(count, first + DEFER_CHUNK - 1)
                    jobs: list[JSONDict] = [{"username": f"u_{g}"} for g in range(first, last + 1)]
                    await deferrer.batch_defer_async(*jobs)
            return time.time()


@contextlib.asynccontextmanager
async def peer(stack: Stack) -> AsyncIterator[Peer]:
    """Procrastinate on ``stack``'s database: its schema applied, its worker running until the end."""
    url = asyncpg_dsn(stack.database_url)  # a plain postgresql:// URL, which libpq takes too
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(url, min_size=2, max_size=10, open=False)
    await pool.open(wait=True, timeout=30)
    app = build_app(url)  # the worker's own app: the task and its queue by the same definition
    worker = Process(
        "procrastinate",
        [sys.executable, "-m", "procrastinate", "--app", APP, "worker", *WORKER_OPTIONS],
        log_path=stack.work_dir / "procrastinate.log",
        env={**stack.env, DATABASE_ENV: url},
    )
    try:
        async with app.open_async(pool=pool):
            await app.schema_manager.apply_schema_async()
            worker.start()
            yield Peer(stack, app, pool, worker)
    finally:
        await asyncio.to_thread(worker.stop)
        await pool.close()


async def _steady(sign_up: Any, *, rate: float, duration_s: float, prefix: str) -> list[Signup]:
    """``sign_up(username)`` on a fixed schedule of ``rate``/s for ``duration_s``, as ``generate_load``."""
    start = time.monotonic()

    async def scheduled(n: int) -> Signup:
        await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        result: Signup = await sign_up(f"{prefix}_{n}")
        return result

    async with asyncio.TaskGroup() as tasks:
        started = [tasks.create_task(scheduled(n)) for n in range(max(1, round(rate * duration_s)))]
    return [task.result() for task in started]


async def _peer_latency(
    side: Peer, *, rate: float, duration_s: float, prefix: str
) -> tuple[list[Signup], Latency]:
    signups = await _steady(side.sign_up, rate=rate, duration_s=duration_s, prefix=prefix)
    first = await first_emails(side.stack, signups, within_s=60)
    return signups, latency_of(first[s.username] - s.committed_at for s in signups if s.username in first)


async def _emails(stack: Stack, count: int) -> float:
    """Waits until the sink holds ``count`` emails; the receipt time of the last."""

    async def arrived() -> bool:
        return len(stack.sink.snapshot()) >= count

    limit = DRAIN_FLOOR_S + count / DRAIN_FLOOR_PER_S
    await wait_for(arrived, timeout=limit, interval=0.2, what=f"{count} emails")
    return max(delivery.received_at for delivery in stack.sink.snapshot())


@dataclass
class Cell:
    latency: Latency
    offered: int
    committed: int
    drain_s: float


async def _outbox_cell(plan: BenchPlan, *, work_dir: Path, pg: str) -> Cell:
    async with Stack(work_dir=work_dir / "peer-outbox", env=OUTBOX_ENV, pg_admin_url=pg) as stack:
        await commit_to_email(stack, rate=1, duration_s=1, prefix="warm")
        signups, latency = await commit_to_email(
            stack, rate=plan.peer_rate, duration_s=plan.duration_s, prefix="steady", within_s=60
        )
        connection = await asyncpg.connect(asyncpg_dsn(stack.database_url), timeout=10)
        try:
            await insert_users(connection, plan.peer_drain)
            stack.sink.clear()
            await insert_outbox_rows(connection, plan.peer_drain, published=False)
            committed = time.time()
        finally:
            await connection.close()
        drain_s = await _emails(stack, plan.peer_drain) - committed
    return Cell(latency, len(signups), sum(1 for s in signups if s.accepted), drain_s)


async def _peer_cell(plan: BenchPlan, *, work_dir: Path, pg: str) -> Cell:
    async with (
        Stack(work_dir=work_dir / "peer-procrastinate", services=(), pg_admin_url=pg) as stack,
        peer(stack) as side,
    ):
        await _peer_latency(side, rate=1, duration_s=1, prefix="warm")
        signups, latency = await _peer_latency(
            side, rate=plan.peer_rate, duration_s=plan.duration_s, prefix="steady"
        )
        connection = await asyncpg.connect(asyncpg_dsn(stack.database_url), timeout=10)
        try:
            await insert_users(connection, plan.peer_drain)
        finally:
            await connection.close()
        stack.sink.clear()
        committed = await side.backlog(plan.peer_drain)
        drain_s = await _emails(stack, plan.peer_drain) - committed
    return Cell(latency, len(signups), len(signups), drain_s)


def _row(name: str, cell: Cell, drain: int) -> list[str]:
    q = cell.latency
    return [
        name,
        str(cell.offered),
        str(cell.committed),
        str(len(q.samples)),
        ms(q.p50),
        ms(q.p95),
        ms(q.p99),
        ms(q.max),
        f"{cell.drain_s:.2f}",
        f"{drain / cell.drain_s:.0f}",
    ]


async def peer_section(plan: BenchPlan, *, capacity: float, work_dir: Path, pg: str) -> Section:
    """Section 10: commit → email at ``plan.peer_rate`` for ``plan.duration_s``, and a ``plan.peer_drain``
    backlog, for the outbox and for Procrastinate. ``capacity``: the hashes/s measured at the run's start."""
    outbox = await _outbox_cell(plan, work_dir=work_dir, pg=pg)
    other = await _peer_cell(plan, work_dir=work_dir, pg=pg)
    n = plan.peer_drain

    def p(latency: Latency, attr: str) -> float | None:
        value: float | None = getattr(latency, attr)
        return None if value is None else value * 1000

    figures: dict[str, float | None] = {"rate": plan.peer_rate, "drain_jobs": float(n)}
    for name, cell in (("outbox", outbox), ("procrastinate", other)):
        for attr in ("p50", "p95", "p99"):
            figures[f"{name}_{attr}_ms"] = p(cell.latency, attr)
        figures[f"{name}_committed"] = float(cell.committed)
        figures[f"{name}_emails"] = float(len(cell.latency.samples))
        figures[f"{name}_drain_s"] = cell.drain_s
    figures["procrastinate_p99_over_outbox_p99"] = ratio(
        figures["procrastinate_p99_ms"], figures["outbox_p99_ms"]
    )
    figures["procrastinate_drain_over_outbox_drain"] = ratio(other.drain_s, outbox.drain_s)
    return Section(
        key="peer",
        title=(
            f"10. Outbox beside Procrastinate: commit → email at {plan.peer_rate:g}/s for "
            f"{plan.duration_s:g} s, and a {n:,}-email backlog"
        ),
        headers=[
            "path",
            "offered",
            "committed",
            "emails",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "drain s",
            "drain emails/s",
        ],
        rows=[_row("outbox (api, relay, worker)", outbox, n), _row("Procrastinate (worker)", other, n)],
        figures=figures,
        notes=[
            f"Procrastinate p99 / outbox p99 = {fmt(figures['procrastinate_p99_over_outbox_p99'])}; "
            f"its drain took {fmt(figures['procrastinate_drain_over_outbox_drain'])} times the outbox's.",
            "Outbox: HTTP signups to `signup api` (argon2id hash, user row and outbox row in one "
            f"transaction), `signup relay`, one `signup worker` (dramatiq_worker_timeout={WORKER_TIMEOUT_MS} "
            "ms); latency from the API's post-commit log line. Procrastinate: the same hash in the bench's "
            "process, then the user row and `configure(connection=...).defer_async()` in one transaction on "
            f"psycopg; its worker at default settings but --concurrency {CONCURRENCY}; latency from the "
            f"commit's return. Both at {plan.peer_rate:g} signups/s against {capacity:.2f} hashes/s "
            "measured at the start.",
            (
                f"{plan.peer_rate:g}/s is above the hashing rate measured at the start: the API queues "
                "signups and sheds those whose client waited 60 s (503; not committed, not counted), where "
                "the bench's own signup waits as long as it takes, so the two sides' loads differ. Compare "
                "them on a machine that hashes faster than the rate."
                if plan.peer_rate > capacity
                else ""
            ),
            "Both workers per email: create a verify_emails row with a fresh code, then lock it, send over "
            "a kept-open SMTP connection to an in-process sink and mark it sent; Procrastinate's task does "
            "it in plain SQL with a plain-text body (no template engine, no metrics).",
            f"Backlog: {n:,} users, then {n:,} outbox rows (one INSERT) or {n:,} jobs (batch defers in one "
            "transaction) committed at once, right after the steady load on the same processes; timed from "
            "that commit to the sink's receipt of the last email.",
        ],
    )
