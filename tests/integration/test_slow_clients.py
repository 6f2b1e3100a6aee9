"""Slow clients cannot starve anyone: the real ``signup api`` process, driven over real sockets.

The slow clients here send a byte every 0.1 s: that is the behaviour under test, not a wait for an outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.settings import Settings
from tests.support import add_link, free_port, signup_body, start_signup, wait_for

TRICKLE_EVERY_S = 0.1


@contextlib.asynccontextmanager
async def api(
    settings: Settings, tmp_path: Path, lab: bool = False, **env: str
) -> AsyncIterator[tuple[str, int]]:
    """``signup api`` on the test database with ``env`` on top (through ``lab.strategies`` with ``lab``, for
    an injected fault); yields its (host, port) once it answers."""
    port = free_port()
    process = start_signup(
        "api",
        env={
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "API_HOST": "127.0.0.1",
            "API_PORT": str(port),
            "API_METRICS_PORT": "0",
            "API_CLIENT_SIGNUPS_PER_HOUR": "0",
            "API_CLIENT_RESENDS_PER_HOUR": "0",
            "LOG_FORMAT": "json",
            **env,
        },
        log_dir=tmp_path,
        lab=lab,
    )
    try:
        async with httpx.AsyncClient(timeout=5) as http:

            async def up() -> bool:
                assert process.running, process.output()[-2000:]
                try:
                    return (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(up, timeout=30, what="signup api to answer")
        yield "127.0.0.1", port
    finally:
        process.stop()


async def trickle(address: tuple[str, int], data: bytes, *, at_once: bytes = b"") -> tuple[bytes, int]:
    """Send ``at_once``, then ``data`` a byte every ``TRICKLE_EVERY_S`` until the server closes the
    connection; return what the server answered and how many bytes of ``data`` were sent."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(at_once)
    answer = asyncio.create_task(reader.read())  # until the server closes (or the head is answered)
    sent = 0
    try:
        for byte in data:
            if answer.done():
                break
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                break
            sent += 1
            await asyncio.sleep(TRICKLE_EVERY_S)
        async with asyncio.timeout(30):
            return await answer, sent
    finally:
        answer.cancel()
        writer.close()


async def test_a_client_trickling_its_headers_is_disconnected_within_the_header_timeout(
    settings: Settings, tmp_path: Path
) -> None:
    # 200 bytes at 0.1 s each: the head would take 20 s to arrive; the header timeout is 1 s.
    head = b"GET /healthz HTTP/1.1\r\nHost: api\r\nX-Slow: " + b"a" * 160 + b"\r\n\r\n"
    async with api(settings, tmp_path, API_HEADER_TIMEOUT_MS="1000") as address:
        answer, sent = await trickle(address, head)
    assert answer == b"", answer  # closed, never answered
    assert sent < len(head)


async def test_a_client_trickling_its_body_gets_408_and_is_disconnected(
    settings: Settings, tmp_path: Path
) -> None:
    body = b'{"username": "' + b"a" * 180 + b'"}'
    head = (
        b"POST /v1/create_user HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    async with api(settings, tmp_path, API_BODY_TIMEOUT_MS="1000") as address:
        answer, sent = await trickle(address, body, at_once=head)  # the head at once, the body slowly
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"\r\nconnection: close\r\n" in answer.lower()
    assert sent < len(body)


async def test_beyond_the_connection_cap_new_connections_are_refused_while_open_ones_are_served(
    settings: Settings, tmp_path: Path
) -> None:
    cap = 8
    async with api(
        settings, tmp_path, API_MAX_CONNECTIONS=str(cap), API_HEADER_TIMEOUT_MS="60000"
    ) as address:
        first = await asyncio.open_connection(*address)  # a client that has not sent its request yet
        idle = [await asyncio.open_connection(*address) for _ in range(cap - 1)]
        surplus_reader, surplus_writer = await asyncio.open_connection(*address)
        async with asyncio.timeout(10):  # refused at once: without the cap it would wait for a request
            refused = await surplus_reader.read()
        surplus_writer.close()
        assert refused.startswith(b"HTTP/1.1 503 "), refused
        assert b"\r\nretry-after: 1\r\n" in refused.lower()

        reader, writer = first
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: api\r\n\r\n")
        async with asyncio.timeout(10):
            assert (await reader.readline()).startswith(b"HTTP/1.1 200 ")
        writer.close()

        for _, other in idle[:2]:
            other.close()  # room again: a new client is served

        async def served() -> bool:
            try:
                async with httpx.AsyncClient(timeout=5) as http:
                    return (await http.get(f"http://{address[0]}:{address[1]}/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(served, timeout=10, what="a new connection to be served once others left")
        for _, other in idle[2:]:
            other.close()


async def test_a_signup_flood_holding_every_shared_connection_does_not_starve_verify_email(
    settings: Settings, db: AsyncEngine, tmp_path: Path
) -> None:
    email_id, code = await add_link(db)
    # Each signup holds its shared-pool connection in its transaction for a minute (the lab's injected slow
    # commit: the product has no such setting).
    slow_signups = {
        "FAULT_COMMIT_DELAY_MS": "60000",
        "API_SIGNUP_MAX_WAITING": "100",
        "API_SIGNUP_MAX_WAIT_MS": "60000",
        "API_SIGNUP_DEADLINE_MS": "120000",
    }
    async with (
        api(settings, tmp_path, lab=True, **slow_signups) as (host, port),
        httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=90) as http,
    ):
        flood = [
            asyncio.create_task(
                http.post("/v1/create_user", json=signup_body(f"flood_{n}", f"f{n}@example.com"))
            )
            for n in range(24)
        ]

        async def pool_taken() -> bool:
            held = sa.text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND state = 'idle in transaction'"
            )
            async with db.connect() as connection:
                return int(await connection.scalar(held) or 0) >= 20  # the shared pool: 10 + 10 in overflow

        try:
            await wait_for(pool_taken, timeout=60, what="the signups to hold every shared connection")
            verified = await http.get(
                "/v1/verify_email",
                params={"email_id": email_id, "secret_code": code},
                headers={"Accept": "application/json"},
            )
            ready = await http.get("/readyz")
        finally:
            for task in flood:
                task.cancel()
            await asyncio.gather(*flood, return_exceptions=True)
    assert verified.status_code == 200, verified.text
    assert verified.json() == {"is_verified": True}
    assert ready.status_code == 200, ready.text
