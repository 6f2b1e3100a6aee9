"""Section 13 of ``signup bench`` (``--only slow``): slow clients and a resend flood against one API.

On loopback, one ``signup api`` (no relay, no worker: nothing here needs an email sent) takes at once:

- ``plan.slow_connections`` slow clients, each sending a request head one byte every ``plan.slow_every_s``
  and connecting again when the server closes it: so many are held open all the time, and each one's
  lifetime (connect to close) is measured against ``API_HEADER_TIMEOUT_MS``;
- ``plan.flood_clients`` clients posting ``resend_verify_email`` for one address as fast as they are
  answered (per-client limits off, as if from as many addresses);
- a prober: ``GET /healthz`` and a real ``verify_email`` (a link written to the database beforehand, each
  used once, JSON), alternately at ``PROBES_PER_S``, each on a new connection as a person's click would be.

Bounded in count (the settings above) and time (``plan.slow_window_s``). The load and the prober share one
event loop and the machine's two cores with the API and PostgreSQL, so the latencies are an upper bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx

from lab.bench.model import BenchPlan, Section, ms
from lab.harness.measure import latency_of
from lab.harness.stack import Stack

PROBES_PER_S = 20
TARGET_P99_S = 0.100
FLOODED = "flooded@example.com"
HEAD = b"GET /healthz HTTP/1.1\r\nHost: api\r\nX-Slow: " + b"a" * 1000 + b"\r\n\r\n"


async def _links(database_url: str, count: int) -> list[tuple[int, str]]:
    """The flooded address's unverified user, and ``count`` users each with a link: (email_id, code)."""
    codes = [secrets.token_urlsafe(32) for _ in range(count)]
    connection = await asyncpg.connect(database_url, timeout=10)
    try:
        await connection.execute(
            "INSERT INTO users (username, hashed_password, full_name, email) VALUES ($1, 'x', 'F', $2)",
            "flooded",
            FLOODED,
        )
        await connection.executemany(
            "INSERT INTO users (username, hashed_password, full_name, email) VALUES ($1, 'x', 'P', $2)",
            [(f"probe{n}", f"probe{n}@example.com") for n in range(count)],
        )
        ids = [
            await connection.fetchval(
                "INSERT INTO verify_emails (username, email, code_sha256, event_id, expired_at) "
                "VALUES ($1, $2, $3, gen_random_uuid(), now() + interval '1 hour') RETURNING id",
                f"probe{n}",
                f"probe{n}@example.com",
                hashlib.sha256(code.encode()).hexdigest(),
            )
            for n, code in enumerate(codes)
        ]
    finally:
        await connection.close()
    return [(int(email_id), code) for email_id, code in zip(ids, codes, strict=True)]


async def _slow_client(
    address: tuple[str, int], every_s: float, until: float, lifetimes: list[float], still_open: list[float]
) -> None:
    """Trickle ``HEAD`` a byte every ``every_s``; when the server closes, note how long it held, reconnect.
    A connection the window ends on is noted in ``still_open`` with its age."""
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection(*address)
        except OSError:
            await asyncio.sleep(every_s)  # refused (the cap, or the backlog): try again, as a client would
            continue
        opened = time.monotonic()
        closed = asyncio.create_task(reader.read())
        try:
            for byte in HEAD:
                if closed.done() or time.monotonic() >= until:
                    break
                writer.write(bytes([byte]))
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(closed), timeout=every_s)
            (lifetimes if closed.done() else still_open).append(time.monotonic() - opened)
        finally:
            closed.cancel()
            writer.close()


async def _flooder(http: httpx.AsyncClient, until: float, statuses: Counter[int]) -> None:
    while time.monotonic() < until:
        try:
            answer = await http.post("/v1/resend_verify_email", json={"email": FLOODED})
            statuses[answer.status_code] += 1
        except httpx.TransportError:
            statuses[0] += 1


async def _probe(
    base_url: str, links: list[tuple[int, str]], until: float
) -> tuple[list[float], list[float], Counter[str]]:
    """``/healthz`` and ``verify_email``, alternately, each on a new connection; their times and statuses."""
    health: list[float] = []
    verify: list[float] = []
    statuses: Counter[str] = Counter()
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, timeout=10, limits=fresh) as http:
        for n, (email_id, code) in enumerate(links):
            if time.monotonic() >= until:
                break
            began = time.monotonic()
            if n % 2:
                answer = await http.get("/healthz")
                health.append(time.monotonic() - began)
                statuses[f"healthz {answer.status_code}"] += 1
            else:
                answer = await http.get(
                    "/v1/verify_email",
                    params={"email_id": email_id, "secret_code": code},
                    headers={"Accept": "application/json"},
                )
                verify.append(time.monotonic() - began)
                statuses[f"verify_email {answer.status_code}"] += 1
            await asyncio.sleep(max(0.0, began + 1 / PROBES_PER_S - time.monotonic()))  # the probe rate
    return health, verify, statuses


def _row(what: str, samples: list[float]) -> list[str]:
    took = latency_of(samples)
    return [what, str(len(samples)), ms(took.p50), ms(took.p95), ms(took.p99), ms(took.max)]


@contextlib.asynccontextmanager
async def _api(plan: BenchPlan, work_dir: Path, pg: str) -> AsyncIterator[Stack]:
    env = {"API_HEADER_TIMEOUT_MS": str(int(plan.slow_header_timeout_s * 1000))}
    async with Stack(work_dir=work_dir / "slow", services=("api",), pg_admin_url=pg, env=env) as stack:
        yield stack


async def slow_section(plan: BenchPlan, *, work_dir: Path, pg: str) -> Section:
    """Section 13: slow clients held within the header timeout; probes' latency during a resend flood."""
    async with _api(plan, work_dir, pg) as stack:
        links = await _links(stack.database_url, int(plan.slow_window_s * PROBES_PER_S) + 10)
        address = ("127.0.0.1", stack.api_port)
        until = time.monotonic() + plan.slow_window_s
        lifetimes: list[float] = []
        still_open: list[float] = []
        resends: Counter[int] = Counter()
        async with httpx.AsyncClient(
            base_url=stack.api_url, timeout=10, limits=httpx.Limits(max_connections=plan.flood_clients)
        ) as flood:
            load = [
                *(
                    asyncio.create_task(
                        _slow_client(address, plan.slow_every_s, until, lifetimes, still_open)
                    )
                    for _ in range(plan.slow_connections)
                ),
                *(asyncio.create_task(_flooder(flood, until, resends)) for _ in range(plan.flood_clients)),
            ]
            await asyncio.sleep(min(plan.slow_every_s * 2, plan.slow_window_s / 4))  # the slow ones connect
            health, verify, probes = await _probe(stack.api_url, links, until)
            await asyncio.gather(*load)
    held, aged = latency_of(lifetimes), latency_of(still_open)
    timeout_s = plan.slow_header_timeout_s
    rows = [
        ["slow connections closed by the server", str(len(lifetimes)), "-", "-", "-", "-"],
        ["slow connections open when the window ended", str(len(still_open)), "-", "-", "-", ms(aged.max)],
        _row("… held open (connect → close)", lifetimes),
        _row("GET /healthz", health),
        _row("GET /v1/verify_email (JSON)", verify),
    ]
    figures: dict[str, float | None] = {
        "slow_closed": float(len(lifetimes)),
        "slow_held_max_s": held.max,
        "slow_open_at_end_max_s": aged.max,
        "healthz_p99_s": latency_of(health).p99,
        "verify_p99_s": latency_of(verify).p99,
        "resend_answers_per_s": sum(resends.values()) / plan.slow_window_s,
    }
    return Section(
        key="slow",
        title=(
            f"13. Slow clients and a resend flood ({plan.slow_connections} slow connections, "
            f"{plan.flood_clients} flooding clients, {plan.slow_window_s:g} s)"
        ),
        headers=["what", "count", "p50 ms", "p95 ms", "p99 ms", "max ms"],
        rows=rows,
        figures=figures,
        notes=[
            f"Slow clients: one header byte every {plan.slow_every_s:g} s, API_HEADER_TIMEOUT_MS = "
            f"{timeout_s * 1000:.0f}; each reconnects when closed, so {plan.slow_connections} stay open. "
            f"Target: every one closed within the header timeout (max held ≤ {timeout_s * 1000:.0f} ms "
            "plus the trickle interval in which the client notices).",
            f"Resend flood on one address: {sum(resends.values())} answers "
            f"({', '.join(f'{status}: {n}' for status, n in sorted(resends.items()))}; 0 = transport error).",
            f"Probes ({PROBES_PER_S}/s, new connection each): "
            + ", ".join(f"{what}: {n}" for what, n in sorted(probes.items()))
            + f". Target: /healthz and verify_email p99 ≤ {TARGET_P99_S * 1000:.0f} ms.",
            "Load generator, prober, API and PostgreSQL share the machine's cores and the generator's "
            "event loop: an upper bound on the API's own latency.",
        ],
    )
