"""Section 13 of ``signup bench`` (``--only slow``): slow clients and a resend flood against one API.

On loopback, one ``signup api`` (no relay, no worker: nothing here needs an email sent) takes at once:

- ``plan.slow_connections`` slow clients, each sending a request head one byte every ``plan.slow_every_s``
  and connecting again when the server closes it: so many are held open all the time, and each one's
  lifetime (connect to close) is measured against ``API_HEADER_TIMEOUT_MS``;
- ``plan.flood_clients`` clients posting ``resend_verify_email`` for one address at ``plan.flood_rate``
  requests/s in all (per-client limits off, as if from as many addresses; ``lab.harness.rawhttp``, the cheap
  client). As fast as answered, they took the API's core whole on the 2-core machine (1,100-2,000/s), and
  what the probes then measured was the CPU left, not what the bounds do;
- a prober: ``GET /healthz`` and a real ``verify_email`` (a link written to the database beforehand, each
  used once, JSON), alternately at ``PROBES_PER_S``, each on a new connection as a person's click would be.

Bounded in count (the settings above) and time (``plan.slow_window_s``). The load runs in a child process
(on uvloop), the prober in the bench's own; both share the machine's cores with the API and PostgreSQL, so
the latencies are an upper bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import multiprocessing
import random
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvloop

from lab.bench.model import BenchPlan, Section, ms
from lab.harness.measure import latency_of
from lab.harness.rawhttp import RawClient
from lab.harness.stack import Stack

PROBES_PER_S = 40
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
    await asyncio.sleep(random.uniform(0, every_s))
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection(*address)
        except OSError:
            await asyncio.sleep(every_s)  # refused (the cap, or the backlog): try again, as a client would
            continue
        opened = time.monotonic()
        closed = asyncio.create_task(reader.read())  # ends at an EOF or a reset: the server closed

        def held(_: object, opened: float = opened) -> None:
            lifetimes.append(time.monotonic() - opened)

        closed.add_done_callback(held)
        try:
            for byte in HEAD:
                if closed.done() or time.monotonic() >= until:
                    break
                writer.write(bytes([byte]))
                await asyncio.sleep(every_s)
            if not closed.done():
                closed.remove_done_callback(held)
                still_open.append(time.monotonic() - opened)
        finally:
            closed.cancel()
            writer.close()


async def _load(
    address: tuple[str, int], until: float, *, connections: int, every_s: float, flooders: int, rate: float
) -> tuple[list[float], list[float], dict[int, int]]:
    """The slow clients and the resend flood until ``until``: (lifetimes, still open, resend statuses)."""
    lifetimes: list[float] = []
    still_open: list[float] = []
    resends: Counter[int] = Counter()
    client = RawClient(f"http://{address[0]}:{address[1]}", timeout_s=10)
    request = client.post_request("/v1/resend_verify_email", json.dumps({"email": FLOODED}).encode())

    async def flooder() -> None:  # each at rate / flooders per second, or as fast as answered if slower
        due = time.monotonic() + random.uniform(0, flooders / rate)
        while due < until:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            status, _ = await client.send(request)
            resends[status] += 1
            due += flooders / rate

    slow = (address, every_s, until, lifetimes, still_open)
    await asyncio.gather(
        *(_slow_client(*slow) for _ in range(connections)), *(flooder() for _ in range(flooders))
    )
    client.close()
    return lifetimes, still_open, dict(resends)


def _load_process(address: tuple[str, int], window_s: float, sizes: dict[str, Any], out: Connection) -> None:
    """A child process's main: says ``started`` through ``out``, runs ``_load`` on uvloop for ``window_s``,
    then sends its result."""
    out.send("started")
    out.send(uvloop.run(_load(address, time.monotonic() + window_s, **sizes)))
    out.close()


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
            what, took = ("healthz", health) if n % 2 else ("verify_email", verify)
            try:
                if n % 2:
                    answer = await http.get("/healthz")
                else:
                    answer = await http.get(
                        "/v1/verify_email",
                        params={"email_id": email_id, "secret_code": code},
                        headers={"Accept": "application/json"},
                    )
                statuses[f"{what} {answer.status_code}"] += 1
            except httpx.TransportError as exc:  # counted, with the time it took, not a crash of the section
                statuses[f"{what} {type(exc).__name__}"] += 1
            took.append(time.monotonic() - began)
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
        sizes = {
            "connections": plan.slow_connections,
            "every_s": plan.slow_every_s,
            "flooders": plan.flood_clients,
            "rate": plan.flood_rate,
        }
        # The load runs in a process of its own: in the prober's event loop it would delay the probes.
        context = multiprocessing.get_context("spawn")
        results, sender = context.Pipe(duplex=False)
        window = (address, plan.slow_window_s, sizes, sender)
        load = context.Process(target=_load_process, args=window, daemon=True)
        load.start()
        try:
            await asyncio.to_thread(results.recv)  # started (a spawned process takes seconds to import)
            until = time.monotonic() + plan.slow_window_s
            await asyncio.sleep(min(plan.slow_every_s * 2, plan.slow_window_s / 4))  # the slow ones connect
            health, verify, probes = await _probe(stack.api_url, links, until)
            lifetimes, still_open, resends = await asyncio.to_thread(results.recv)
        finally:
            load.join(timeout=30)
            if load.is_alive():
                load.kill()
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
            f"{plan.flood_clients} clients flooding resends at {plan.flood_rate:g}/s, "
            f"{plan.slow_window_s:g} s)"
        ),
        headers=["what", "count", "p50 ms", "p95 ms", "p99 ms", "max ms"],
        rows=rows,
        figures=figures,
        notes=[
            f"Slow clients: one header byte every {plan.slow_every_s:g} s, API_HEADER_TIMEOUT_MS = "
            f"{timeout_s * 1000:.0f}; each reconnects when closed, so {plan.slow_connections} stay open. "
            f"Target: every one closed within the header timeout (max held ≤ {timeout_s * 1000:.0f} ms "
            "plus the trickle interval in which the client notices).",
            f"Resend flood on one address, {plan.flood_rate:g} requests/s offered: "
            f"{sum(resends.values())} answers "
            f"({', '.join(f'{status}: {n}' for status, n in sorted(resends.items()))}; 0 = transport error).",
            f"Probes ({PROBES_PER_S}/s, new connection each): "
            + ", ".join(f"{what}: {n}" for what, n in sorted(probes.items()))
            + f". Target: /healthz and verify_email p99 ≤ {TARGET_P99_S * 1000:.0f} ms.",
            "The load (a process of its own), the prober, the API and PostgreSQL share the machine's "
            "cores: an upper bound on the API's own latency.",
        ],
    )
