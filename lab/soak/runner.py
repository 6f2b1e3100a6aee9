"""The soak: signups at a steady rate over HTTP while the relay, the worker, Redis, PostgreSQL and SMTP fail.

``signup soak`` (``just soak``) runs 10,000 signups and writes docs/RELIABILITY.md; the e2e test runs a
short one. It starts everything privately (a PostgreSQL cluster and a Redis of its own, an SMTP
sink, ``signup api/relay/worker`` subprocesses), then: SIGKILLs the relay and the worker at random moments
and restarts them, crashes PostgreSQL once (``pg_ctl -m immediate``), SIGKILLs Redis once after the last
kill, makes Redis lose its data twice (a ``FLUSHALL``, and a restart without its append-only file), and has
SMTP answer 451 to a random share of attempts. Meanwhile a share of the new users ask for new emails, too
soon and in time (lab/soak/resends.py). After a deadline it judges the run (see
lab/soak/verdict.py).
"""

from __future__ import annotations

import asyncio
import random
import secrets
import shutil
import time
from collections import Counter
from pathlib import Path

import httpx
import redis

from lab.harness.database import (
    committed_users,
    mail_records,
    republished_rows,
    unpublished_rows,
    verified_users,
)
from lab.harness.load import Signup, email_of, generate_load
from lab.harness.postgres import PrivatePostgres
from lab.harness.stack import Stack
from lab.soak.plan import SoakPlan
from lab.soak.resends import Request, resend_script
from lab.soak.verdict import Verdict, judge_api, judge_logs, judge_mail, judge_resends, resend_decisions
from services.worker.emails import message_id_header
from shared.logging import get_logger

log = get_logger()


class Soak:
    """One run: the private PostgreSQL, the lab stack on it, the load, the faults, and what they recorded."""

    def __init__(self, plan: SoakPlan, *, work_dir: Path) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.postgres = PrivatePostgres()
        self.stack = Stack(
            work_dir=work_dir,
            env=plan.env,
            smtp_fail_ratio=plan.smtp_fail_ratio,
            pg_admin_url=self.postgres.admin_url,
        )
        self.signups: list[Signup] = []
        self.resends: list[Request] = []
        self._resending: list[asyncio.Task[None]] = []
        self.faults: Counter[str] = Counter()
        self.outage: tuple[float, float] | None = None
        self.prefix = f"soak_{secrets.token_hex(3)}"
        self.redis_faults = asyncio.Lock()
        """One Redis fault at a time: a restart must not start a server another fault has started."""
        self.losses: list[tuple[float, str]] = []
        """(when, kind) of the Redis data losses still to come, in order: each happens at the first worker
        kill after its time, while the worker is down."""

    async def start(self) -> None:
        await asyncio.to_thread(self.postgres.start)
        await self.stack.start()

    async def close(self) -> None:
        try:
            await self.stack.close()
        finally:
            await asyncio.to_thread(self.postgres.close)

    async def load(self, duration_s: float) -> None:
        """Signups at the plan's steady rate, never waiting for earlier answers; a share of the accepted
        ones go on to ask for new emails. Returns when every user's requests are answered."""
        # A connection per request: a user's requests are seconds apart, and a request sent on a kept-alive
        # connection just as the server closes it for idleness gets no answer at all.
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=self.stack.api_url, timeout=120, limits=limits) as client:

            def progress(signup: Signup) -> None:
                self.signups.append(signup)
                if len(self.signups) % 1000 == 0:
                    log.info("soak progress", signups=len(self.signups), faults=dict(self.faults))
                if signup.accepted and self.rng.random() < self.plan.resend_share:
                    script = resend_script(
                        client,
                        signup,
                        plan=self.plan,
                        rng=self.rng,
                        sink=self.stack.sink,
                        record=self.resends,
                    )
                    self._resending.append(asyncio.create_task(script))

            await generate_load(
                self.stack.api_url,
                rate=self.plan.rate,
                duration_s=duration_s,
                prefix=self.prefix,
                timeout_s=120,
                on_result=progress,
            )
            await asyncio.gather(*self._resending)

    async def kill_repeatedly(self, name: str, until: asyncio.Event) -> None:
        """SIGKILL ``name`` after random pauses and start it again, until ``until`` is set."""
        while not until.is_set():
            try:
                await asyncio.wait_for(until.wait(), timeout=self.rng.uniform(*self.plan.kill_every_s))
                return
            except TimeoutError:
                pass
            self.stack.kill(name)
            self.faults[f"SIGKILL {name}"] += 1
            await asyncio.sleep(self.rng.uniform(*self.plan.down_for_s))
            if name == "worker":
                # While the worker is down, messages wait in Redis: a data loss now takes them with it
                # (and those the worker held).
                await self.due_losses()
            await self.stack.restart(name)

    async def restart_redis(self, *, after_s: float) -> None:
        await asyncio.sleep(after_s)
        async with self.redis_faults:
            await asyncio.to_thread(self.stack.redis.kill)
            self.faults["SIGKILL Redis, restart"] += 1
            await asyncio.sleep(self.plan.redis_down_s)
            await asyncio.to_thread(self.stack.redis.start)

    async def lose_redis_data(self, kind: str) -> None:
        """``flushall``: an operator's ``FLUSHALL``; ``wipe``: SIGKILL Redis and start it on no data, as a
        Redis without persistence restarts. Whatever was queued, delayed or held is gone; the relay must
        notice."""
        async with self.redis_faults:
            if kind == "flushall":
                client = redis.Redis.from_url(self.stack.redis.url)
                try:
                    await asyncio.to_thread(client.flushall)
                finally:
                    client.close()
                self.faults["Redis FLUSHALL"] += 1
                return
            await asyncio.to_thread(self.stack.redis.kill)
            await asyncio.to_thread(_remove_data, self.stack.redis.data_dir)
            self.faults["Redis restart without its data"] += 1
            await asyncio.sleep(self.plan.redis_down_s)
            await asyncio.to_thread(self.stack.redis.start)

    async def due_losses(self, *, final: bool = False) -> None:
        """The Redis data losses that are due (all that are left, when ``final``)."""
        while self.losses and (final or time.monotonic() >= self.losses[0][0]):
            _, kind = self.losses.pop(0)
            await self.lose_redis_data(kind)

    async def crash_postgres(self, *, after_s: float) -> None:
        await asyncio.sleep(after_s)
        began = time.time()
        await asyncio.to_thread(self.postgres.stop, mode="immediate")
        self.faults["PostgreSQL crash (immediate stop), restart"] += 1
        await asyncio.sleep(self.plan.postgres_down_s)
        await asyncio.to_thread(self.postgres.start)
        self.outage = (began, time.time() + self.plan.outage_grace_s)

    async def drain(self) -> None:
        """Wait until every outbox event has its email, or the deadline; then a little longer for strays."""
        deadline = time.monotonic() + self.plan.drain_timeout_s
        while time.monotonic() < deadline:
            events, _ = await mail_records(self.stack.database_url)
            delivered = {delivery.message_id for delivery in self.stack.sink.snapshot()}
            if all(message_id_header(event_id) in delivered for event_id in events):
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(self.plan.settle_s)

    async def run(self) -> Verdict:
        duration = self.plan.signups / self.plan.rate
        stop_killing = asyncio.Event()
        chaos = [
            asyncio.create_task(self.kill_repeatedly("relay", stop_killing)),
            asyncio.create_task(self.kill_repeatedly("worker", stop_killing)),
            asyncio.create_task(self.crash_postgres(after_s=duration * self.plan.postgres_at)),
            asyncio.create_task(self.restart_redis(after_s=duration * self.plan.redis_at)),
        ]
        began = time.monotonic()
        self.losses = sorted(
            [
                (began + duration * self.plan.flushall_at, "flushall"),
                (began + duration * self.plan.redis_wipe_at, "wipe"),
            ]
        )
        load = asyncio.create_task(self.load(duration))
        await asyncio.sleep(duration * self.plan.kills_until)
        stop_killing.set()
        await asyncio.gather(load, *chaos)
        await self.due_losses(final=True)  # no worker kill came after its time
        await self.drain()
        return await self.judge()

    async def judge(self) -> Verdict:
        committed = await committed_users(self.stack.database_url)
        users = {name: (email_of(name), at) for name, at in committed.items()}
        verdict = Verdict(signups_sent=len(self.signups), committed=len(users), faults=self.faults)
        verdict.smtp_attempts, verdict.smtp_refused = len(self.stack.sink.attempts), self.stack.sink.refused
        verdict.unpublished = await unpublished_rows(self.stack.database_url)
        verdict.republished = await republished_rows(self.stack.database_url)
        events, resends = await mail_records(self.stack.database_url)
        judge_mail(verdict, users=users, events=events, resends=resends, mail=self.stack.sink.snapshot())
        judge_api(verdict, self.signups, self.resends, outage=self.outage)
        verified = await verified_users(self.stack.database_url)
        for name, service in self.stack.services.items():
            await asyncio.to_thread(service.stop)
            verdict.crashes += [f"{name} exited with {code}" for code in service.crashes]
        logs = {name: service.log_lines() for name, service in self.stack.services.items()}
        judge_resends(
            verdict,
            requests=self.resends,
            decisions=resend_decisions(verdict, logs["api"]),
            users=users,
            resends=resends,
            verified=verified,
            min_interval_s=self.plan.resend_min_interval_s,
            max_per_day=self.plan.resend_max_per_day,
        )
        judge_logs(verdict, logs, emails={email.lower() for email, _ in users.values()})
        return verdict


def _remove_data(data_dir: Path) -> None:
    """Every file Redis persists (append-only files, RDB snapshot) in ``data_dir``; its log stays."""
    for path in data_dir.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        elif path.name != "redis.log":
            path.unlink()


async def run_soak(plan: SoakPlan, *, work_dir: Path) -> Verdict:
    """Run one soak in ``work_dir`` (service logs land there) and return its verdict."""
    soak = Soak(plan, work_dir=work_dir)
    try:
        await soak.start()
        return await soak.run()
    finally:
        await soak.close()
