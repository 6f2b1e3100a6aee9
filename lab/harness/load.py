"""Signups over HTTP at a steady rate, recording what each one got back and when.

The response-received time stands for the commit time: the API answers 200 only after its transaction
committed, so "commit → email received" is measured from here, on the harness's clock, against the SMTP
sink's receive time on the same clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import msgspec

from lab.harness.rawhttp import RawClient

PASSWORD = "lab-password-1"  # noqa: S105 - a throwaway password for throwaway users


@dataclass(frozen=True)
class Signup:
    """One signup request and its outcome."""

    username: str
    email: str
    status: int
    """HTTP status, or 0 when no response came (connection refused, timeout)."""
    sent_at: float
    committed_at: float
    """Wall-clock time the response arrived: for a 200, the signup had committed by then."""
    retry_after: str | None = None
    """The ``Retry-After`` header, which every 503 must carry."""

    @property
    def accepted(self) -> bool:
        return self.status == 200


def email_of(username: str) -> str:
    """The address a lab user signs up with; the sink maps recipients back to usernames with it."""
    return f"{username}@lab.example"


def _body(username: str) -> dict[str, str]:
    """The ``create_user`` body of a lab user."""
    return {"username": username, "full_name": "Lab User", "email": email_of(username), "password": PASSWORD}


async def _one(client: httpx.AsyncClient, username: str) -> Signup:
    email = email_of(username)
    sent_at = time.time()
    retry_after = None
    try:
        response = await client.post("/v1/create_user", json=_body(username))
        status, retry_after = response.status_code, response.headers.get("retry-after")
    except httpx.HTTPError:
        status = 0
    return Signup(username, email, status, sent_at, time.time(), retry_after)


async def generate_load(
    api_url: str,
    *,
    rate: float,
    duration_s: float,
    prefix: str,
    timeout_s: float = 60.0,
    on_result: Callable[[Signup], None] | None = None,
    cheap: bool = False,
) -> list[Signup]:
    """Send ``rate`` signups per second for ``duration_s`` seconds, each as its own request, and wait for all.

    Requests start on a fixed schedule whatever the earlier ones are doing, so a slow commit does not slow
    the offered load. Usernames are ``{prefix}_{n}``. ``on_result`` sees each outcome as it arrives.
    ``cheap`` sends them with ``RawClient`` (requests encoded before the first is sent, only the status and
    ``Retry-After`` read back): the overload benchmark's generator shares the cores with the API it floods.
    """
    if cheap:
        return await _generate_cheaply(
            api_url, rate=rate, duration_s=duration_s, prefix=prefix, timeout_s=timeout_s
        )
    count = max(1, round(rate * duration_s))
    start = time.monotonic()
    results: list[Signup] = []

    async def scheduled(n: int) -> None:
        await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        result = await _one(client, f"{prefix}_{n}")
        results.append(result)
        if on_result is not None:
            on_result(result)

    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with (
        httpx.AsyncClient(base_url=api_url, timeout=timeout_s, limits=limits) as client,
        asyncio.TaskGroup() as tasks,
    ):
        for n in range(count):
            tasks.create_task(scheduled(n))
    return sorted(results, key=lambda signup: signup.sent_at)


async def _generate_cheaply(
    api_url: str, *, rate: float, duration_s: float, prefix: str, timeout_s: float
) -> list[Signup]:
    client = RawClient(api_url, timeout_s=timeout_s)
    usernames = [f"{prefix}_{n}" for n in range(max(1, round(rate * duration_s)))]
    requests = [client.post_request("/v1/create_user", msgspec.json.encode(_body(u))) for u in usernames]
    results: list[Signup] = []
    start = time.monotonic()

    async def scheduled(n: int) -> None:
        await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        sent_at = time.time()
        status, retry_after = await client.send(requests[n])
        results.append(
            Signup(usernames[n], email_of(usernames[n]), status, sent_at, time.time(), retry_after)
        )

    try:
        async with asyncio.TaskGroup() as tasks:
            for n in range(len(requests)):
                tasks.create_task(scheduled(n))
    finally:
        client.close()
    return sorted(results, key=lambda signup: signup.sent_at)


async def saturate(
    api_url: str, *, concurrency: int, duration_s: float, prefix: str, cheap: bool = False
) -> list[Signup]:
    """Keep ``concurrency`` signups in flight for ``duration_s`` seconds (each client sends its next one as
    soon as the last is answered): the API's throughput at saturation, without an ever-growing queue.
    ``cheap`` sends them with ``RawClient``, as ``generate_load(cheap=True)`` does."""
    deadline = time.monotonic() + duration_s
    results: list[Signup] = []

    async def client_loop(client_no: int, one: Callable[[str], Awaitable[Signup]]) -> None:
        n = 0
        while time.monotonic() < deadline:
            results.append(await one(f"{prefix}_{client_no}_{n}"))
            n += 1

    if cheap:
        raw = RawClient(api_url, timeout_s=60.0)

        async def one(username: str) -> Signup:
            request = raw.post_request("/v1/create_user", msgspec.json.encode(_body(username)))
            sent_at = time.time()
            status, retry_after = await raw.send(request)
            return Signup(username, email_of(username), status, sent_at, time.time(), retry_after)

        try:
            async with asyncio.TaskGroup() as tasks:
                for client_no in range(concurrency):
                    tasks.create_task(client_loop(client_no, one))
        finally:
            raw.close()
    else:
        async with (
            httpx.AsyncClient(base_url=api_url, timeout=60.0) as client,
            asyncio.TaskGroup() as tasks,
        ):
            for client_no in range(concurrency):
                tasks.create_task(client_loop(client_no, lambda username: _one(client, username)))
    return sorted(results, key=lambda signup: signup.sent_at)
