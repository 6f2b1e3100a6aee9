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
import socket
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

from lab.servers import PersistentRedis, PrivatePostgres
from lab.soak_db import committed_users, unpublished_rows
from lab.soak_report import write_report
from lab.soak_stack import MailSink, Service
from lab.soak_verdict import ApiAnswer, Verdict, judge_api, judge_logs, judge_mail
from shared.logging import configure_logging, get_logger
from shared.migrate import migrate

log = get_logger()

SERVICES = ("api", "relay", "worker")


@dataclass(frozen=True, kw_only=True)
class SoakPlan:
    signups: int = 10_000
    rate: float = 5.0
    """Signups started per second, whatever the answers. Each costs an argon2id hash (64 MiB, ~0.1 to
    0.5 s of CPU): on a 2-core machine the API sustains about 5 per second."""
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _environment(*, database_url: str, redis_url: str, smtp_port: int, api_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
        "SMTP_TIMEOUT_MS": "5000",
        "API_HOST": "127.0.0.1",
        "API_PORT": str(api_port),
        "RELAY_METRICS_PORT": "0",
        "WORKER_METRICS_PORT": "0",
        "RELAY_POLL_INTERVAL_MS": "500",
        "WORKER_MIN_BACKOFF_MS": "100",
        "WORKER_MAX_BACKOFF_MS": "2000",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "info",
        "dramatiq_worker_timeout": "50",
    }


class Soak:
    """One run: the servers, the services, the load, the faults, and what they recorded."""

    def __init__(self, plan: SoakPlan, *, work_dir: Path) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.postgres = PrivatePostgres()
        self.redis = PersistentRedis()
        self.sink = MailSink(port=_free_port(), fail_ratio=plan.smtp_fail_ratio)
        self.api_url = f"http://127.0.0.1:{_free_port()}"
        env = _environment(
            database_url=self.postgres.url,
            redis_url=self.redis.url,
            smtp_port=self.sink.port,
            api_port=int(self.api_url.rsplit(":", 1)[1]),
        )
        self.services = {name: Service(name, env=env, log_dir=work_dir) for name in SERVICES}
        self.answers: list[ApiAnswer] = []
        self.faults: Counter[str] = Counter()
        self.outage: tuple[float, float] | None = None
        self.run_id = secrets.token_hex(3)
        self.started = 0.0

    def now(self) -> float:
        return time.monotonic() - self.started

    async def start(self) -> None:
        await asyncio.to_thread(self.postgres.start)
        await migrate(self.postgres.url)
        self.redis.start()
        self.sink.start()
        for service in self.services.values():
            service.start()
        async with httpx.AsyncClient(base_url=self.api_url) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the API did not become ready; see {self.services['api'].log_path}")
                await asyncio.sleep(0.1)

    async def close(self) -> None:
        for service in self.services.values():
            await asyncio.to_thread(service.stop)
        self.sink.stop()
        self.redis.close()
        await asyncio.to_thread(self.postgres.close)

    async def load(self) -> None:
        """Start one signup every 1/rate seconds, never waiting for the previous answers."""
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(base_url=self.api_url, timeout=60, limits=limits) as client:
            tasks = []
            for i in range(self.plan.signups):
                await asyncio.sleep(max(0.0, i / self.plan.rate - self.now()))
                tasks.append(asyncio.create_task(self._sign_up(client, i)))
                if i % 1000 == 999:
                    log.info("soak progress", signups=i + 1, faults=dict(self.faults))
            await asyncio.gather(*tasks)

    async def _sign_up(self, client: httpx.AsyncClient, i: int) -> None:
        body = {
            "username": f"soak_{self.run_id}_{i}",
            "full_name": "Soak Tester",
            "email": f"soak.{self.run_id}.{i}@example.com",
            "password": secrets.token_urlsafe(12),
        }
        sent = self.now()
        try:
            response = await client.post("/v1/create_user", json=body)
        except httpx.HTTPError as exc:
            self.answers.append(ApiAnswer(self.now(), 0, detail=repr(exc), latency_s=self.now() - sent))
            return
        retry_after = response.headers.get("retry-after")
        detail = "" if response.status_code == 200 else response.text
        answer = ApiAnswer(self.now(), response.status_code, retry_after, detail, self.now() - sent)
        self.answers.append(answer)

    async def kill_repeatedly(self, name: str, until: asyncio.Event) -> None:
        """SIGKILL ``name`` after random pauses and start it again, until ``until`` is set."""
        service = self.services[name]
        while not until.is_set():
            try:
                await asyncio.wait_for(until.wait(), timeout=self.rng.uniform(*self.plan.kill_every_s))
                return
            except TimeoutError:
                pass
            await asyncio.to_thread(service.kill)
            self.faults[f"SIGKILL {name}"] += 1
            await asyncio.sleep(self.rng.uniform(*self.plan.down_for_s))
            service.start()

    async def restart_redis(self, *, at: float) -> None:
        await asyncio.sleep(max(0.0, at - self.now()))
        await asyncio.to_thread(self.redis.kill)
        self.faults["SIGKILL Redis, restart"] += 1
        await asyncio.sleep(self.plan.redis_down_s)
        await asyncio.to_thread(self.redis.start)

    async def crash_postgres(self, *, at: float) -> None:
        await asyncio.sleep(max(0.0, at - self.now()))
        began = self.now()
        await asyncio.to_thread(self.postgres.stop, mode="immediate")
        self.faults["PostgreSQL crash (immediate stop), restart"] += 1
        await asyncio.sleep(self.plan.postgres_down_s)
        await asyncio.to_thread(self.postgres.start)
        self.outage = (began, self.now() + self.plan.outage_grace_s)

    async def drain(self) -> None:
        """Wait until every committed user has an email, or the deadline; then a little longer for strays."""
        deadline = time.monotonic() + self.plan.drain_timeout_s
        while time.monotonic() < deadline:
            users = await committed_users(self.postgres.url)
            delivered = {r for d in self.sink.snapshot() for r in d.recipients}
            if all(email.lower() in delivered for email, _ in users.values()):
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(self.plan.settle_s)

    async def run(self) -> Verdict:
        self.started = time.monotonic()
        duration = self.plan.signups / self.plan.rate
        stop_killing = asyncio.Event()
        chaos = [
            asyncio.create_task(self.kill_repeatedly("relay", stop_killing)),
            asyncio.create_task(self.kill_repeatedly("worker", stop_killing)),
            asyncio.create_task(self.crash_postgres(at=duration * self.plan.postgres_at)),
            asyncio.create_task(self.restart_redis(at=duration * self.plan.redis_at)),
        ]
        load = asyncio.create_task(self.load())
        await asyncio.sleep(duration * self.plan.kills_until)
        stop_killing.set()
        await asyncio.gather(load, *chaos)
        for service in self.services.values():
            if not service.running:
                service.start()
        await self.drain()
        return await self.judge()

    async def judge(self) -> Verdict:
        users = await committed_users(self.postgres.url)
        verdict = Verdict(signups_sent=self.plan.signups, committed=len(users), faults=self.faults)
        verdict.smtp_attempts, verdict.smtp_refused = self.sink.attempts, self.sink.refused
        verdict.unpublished = await unpublished_rows(self.postgres.url)
        judge_mail(verdict, users=users, mail=self.sink.snapshot())
        judge_api(verdict, self.answers, outage=self.outage)
        for name, service in self.services.items():
            await asyncio.to_thread(service.stop)
            verdict.crashes += [f"{name} exited with {code}" for code in service.exited_by_itself]
        logs = {name: service.log_lines() for name, service in self.services.items()}
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
    verdict = asyncio.run(run_soak(plan, work_dir=work_dir))
    if args.out:
        write_report(verdict, plan=plan, path=Path(args.out))
    log.info("soak finished", ok=verdict.ok, logs=str(work_dir), problems=verdict.problems())
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
