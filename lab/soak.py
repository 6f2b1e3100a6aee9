"""The soak: signups at a steady rate over HTTP while the relay, the worker, Redis, PostgreSQL and SMTP fail.

``just soak`` (``python -m lab.soak``) runs 10,000 signups and writes docs/RELIABILITY.md; the e2e test
runs a short one. It starts everything privately (a PostgreSQL cluster and a Redis of its own, an SMTP
sink, ``signup api/relay/worker`` subprocesses), then: SIGKILLs the relay and the worker at random moments
and restarts them, crashes PostgreSQL once (``pg_ctl -m immediate``), SIGKILLs Redis once after the last
kill, and has SMTP answer 451 to a random share of attempts. After a deadline it judges the run (see
lab/soak_verdict.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lab.load import Signup, email_of, generate_load
from lab.postgres import PrivatePostgres
from lab.run import machine
from lab.soak_report import write_report
from lab.soak_verdict import Verdict, judge_api, judge_logs, judge_mail
from lab.stack import Stack
from shared.logging import configure_logging, get_logger

log = get_logger()

# Short backoffs, so that a 451 or a crash is retried within the soak's deadline.
SOAK_ENV = {
    "SMTP_TIMEOUT_MS": "5000",
    "RELAY_POLL_INTERVAL_MS": "500",
    "WORKER_MIN_BACKOFF_MS": "100",
    "WORKER_MAX_BACKOFF_MS": "2000",
}


@dataclass(frozen=True, kw_only=True)
class SoakPlan:
    signups: int = 10_000
    rate: float = 3.0
    """Signups started per second, whatever the answers. Each costs an argon2id hash (64 MiB, 0.1 to 0.5 s
    of CPU): on a shared 2-core machine, with the relay and the worker restarting, the API keeps up with
    about 4 per second, so 10,000 signups take about an hour."""
    kill_every_s: tuple[float, float] = (5.0, 20.0)
    """The relay and the worker are each SIGKILLed after a random pause in this range, again and again."""
    kills_until: float = 0.8
    """Share of the load during which kills happen: the Redis restart comes later, so that no worker
    restart can rescue a message a live worker stranded when Redis went away."""
    postgres_at: float = 0.4
    redis_at: float = 0.9
    down_for_s: tuple[float, float] = (0.2, 3.0)
    smtp_fail_ratio: float = 0.2
    redis_down_s: float = 2.0
    postgres_down_s: float = 3.0
    outage_grace_s: float = 10.0
    """503s are expected from the PostgreSQL crash until this long after it is back (pool timeouts)."""
    drain_timeout_s: float = 180.0
    settle_s: float = 3.0
    seed: int | None = None


class Soak:
    """One run: the private PostgreSQL, the lab stack on it, the load, the faults, and what they recorded."""

    def __init__(self, plan: SoakPlan, *, work_dir: Path) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.postgres = PrivatePostgres()
        self.stack = Stack(
            work_dir=work_dir,
            env=SOAK_ENV,
            smtp_fail_ratio=plan.smtp_fail_ratio,
            pg_admin_url=self.postgres.admin_url,
        )
        self.signups: list[Signup] = []
        self.faults: Counter[str] = Counter()
        self.outage: tuple[float, float] | None = None
        self.prefix = f"soak_{secrets.token_hex(3)}"

    async def start(self) -> None:
        await asyncio.to_thread(self.postgres.start)
        await self.stack.start()

    async def close(self) -> None:
        try:
            await self.stack.close()
        finally:
            await asyncio.to_thread(self.postgres.close)

    async def load(self, duration_s: float) -> None:
        """Signups at the plan's steady rate, never waiting for earlier answers."""

        def progress(signup: Signup) -> None:
            self.signups.append(signup)
            if len(self.signups) % 1000 == 0:
                log.info("soak progress", signups=len(self.signups), faults=dict(self.faults))

        await generate_load(
            self.stack.api_url,
            rate=self.plan.rate,
            duration_s=duration_s,
            prefix=self.prefix,
            timeout_s=120,
            on_result=progress,
        )

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
            await self.stack.restart(name)

    async def restart_redis(self, *, after_s: float) -> None:
        await asyncio.sleep(after_s)
        await asyncio.to_thread(self.stack.redis.kill)
        self.faults["SIGKILL Redis, restart"] += 1
        await asyncio.sleep(self.plan.redis_down_s)
        await asyncio.to_thread(self.stack.redis.start)

    async def crash_postgres(self, *, after_s: float) -> None:
        await asyncio.sleep(after_s)
        began = time.time()
        await asyncio.to_thread(self.postgres.stop, mode="immediate")
        self.faults["PostgreSQL crash (immediate stop), restart"] += 1
        await asyncio.sleep(self.plan.postgres_down_s)
        await asyncio.to_thread(self.postgres.start)
        self.outage = (began, time.time() + self.plan.outage_grace_s)

    async def drain(self) -> None:
        """Wait until every committed user has an email, or the deadline; then a little longer for strays."""
        deadline = time.monotonic() + self.plan.drain_timeout_s
        while time.monotonic() < deadline:
            users = await self.stack.committed_users()
            delivered = {r for d in self.stack.sink.snapshot() for r in d.recipients}
            if all(email_of(name).lower() in delivered for name in users):
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
        load = asyncio.create_task(self.load(duration))
        await asyncio.sleep(duration * self.plan.kills_until)
        stop_killing.set()
        await asyncio.gather(load, *chaos)
        await self.drain()
        return await self.judge()

    async def judge(self) -> Verdict:
        users = {name: (email_of(name), at) for name, at in (await self.stack.committed_users()).items()}
        verdict = Verdict(signups_sent=len(self.signups), committed=len(users), faults=self.faults)
        verdict.smtp_attempts, verdict.smtp_refused = self.stack.sink.attempts, self.stack.sink.refused
        verdict.unpublished = await self.stack.unpublished_rows()
        judge_mail(verdict, users=users, mail=self.stack.sink.snapshot())
        judge_api(verdict, self.signups, outage=self.outage)
        for name, service in self.stack.services.items():
            await asyncio.to_thread(service.stop)
            verdict.crashes += [f"{name} exited with {code}" for code in service.crashes]
        logs = {name: service.log_lines() for name, service in self.stack.services.items()}
        judge_logs(verdict, logs, emails={email.lower() for email, _ in users.values()})
        return verdict


async def run_soak(plan: SoakPlan, *, work_dir: Path) -> Verdict:
    """Run one soak in ``work_dir`` (service logs land there) and return its verdict."""
    soak = Soak(plan, work_dir=work_dir)
    try:
        await soak.start()
        return await soak.run()
    finally:
        await soak.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--signups", type=int, default=SoakPlan.signups)
    parser.add_argument("--rate", type=float, default=SoakPlan.rate, help="signups per second")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", default="docs/RELIABILITY.md", help="the report ('' for none)")
    args = parser.parse_args(argv)
    configure_logging(service="soak", log_format="console")
    plan = SoakPlan(signups=args.signups, rate=args.rate, seed=args.seed)
    work_dir = Path(tempfile.mkdtemp(prefix="signup-soak-"))
    began, load_before = time.monotonic(), os.getloadavg()
    verdict = asyncio.run(run_soak(plan, work_dir=work_dir))
    if args.out:
        host, load_after = machine(), os.getloadavg()
        command = " ".join(["python -m lab.soak", *(sys.argv[1:] if argv is None else argv)])
        run = (
            f"Run: `{command}`, {(time.monotonic() - began) / 60:.0f} min, on {host['nproc']} CPUs "
            f"({host['cpu']}), Python {host['python']}; load average (1 min) {load_before[0]:.2f} before, "
            f"{load_after[0]:.2f} after."
        )
        write_report(verdict, plan=plan, path=Path(args.out), run=run)
    log.info("soak finished", ok=verdict.ok, logs=str(work_dir), problems=verdict.problems())
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
