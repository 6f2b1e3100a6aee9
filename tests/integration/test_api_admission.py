"""Holding the load on the real API and PostgreSQL: shed what cannot be served in time, make retries safe."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import msgspec
import pytest
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api import app as app_module
from services.api.admission import Admission
from services.api.app import create_app
from shared.database import idempotency_keys, outbox, users
from shared.settings import Settings
from tests.support import SmtpSink, count, running_relay, running_worker, serving, signup_body, wait_for


async def test_a_flood_beyond_the_limit_is_shed_fast_and_every_accepted_signup_gets_its_email(
    db: AsyncEngine, settings: Settings, sink: SmtpSink
) -> None:
    # One at work, two waiting (patiently: what is measured is the refusal of the rest, on any machine).
    tight = msgspec.structs.replace(
        settings,
        api_signup_concurrency=1,
        api_signup_max_waiting=2,
        api_signup_max_wait_ms=60_000,
        api_signup_deadline_ms=120_000,
    )
    async with serving(tight) as http:

        async def sign_up(n: int) -> tuple[httpx.Response, float]:
            started = time.monotonic()
            response = await http.post("/v1/create_user", json=signup_body(f"flood_{n}", f"f{n}@example.com"))
            return response, time.monotonic() - started

        answers = await asyncio.gather(*(sign_up(n) for n in range(12)))
        health = await http.get("/healthz")
    assert health.status_code == 200
    accepted = [response for response, _ in answers if response.status_code == 200]
    shed = [(response, took) for response, took in answers if response.status_code == 503]
    assert len(accepted) + len(shed) == 12, [response.status_code for response, _ in answers]
    assert 3 <= len(accepted) < 12 and shed
    for response, took in shed:
        assert int(response.headers["retry-after"]) >= 1 and took < 0.5
        assert response.json()["error"] == "too many signups at once, retry later"
    assert await count(db, users) == len(accepted) == await count(db, outbox)
    with running_worker(settings):
        async with running_relay(settings):

            def mailed() -> list[str]:
                return sorted(to for mail in sink.snapshot() for to in mail.recipients)

            expected = sorted(r.json()["user"]["email"] for r in accepted)

            async def all_mailed() -> bool:
                return mailed() == expected

            await wait_for(all_mailed, timeout=30, what="one email for every accepted signup")
    assert mailed() == expected


async def test_a_retry_with_the_same_key_returns_the_original_answer(client, db) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = await client.post("/v1/create_user", json=signup_body(), headers=key)
    again = await client.post("/v1/create_user", json=signup_body(), headers=key)

    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert await count(db, users) == 1 == await count(db, outbox)
    # Without the key the same body is a second signup attempt, as before: 409.
    assert (await client.post("/v1/create_user", json=signup_body())).status_code == 409


async def test_concurrent_duplicates_with_one_key_create_one_user(db, settings) -> None:
    # Never shed, on any machine: what is tested is the key under concurrency.
    patient = msgspec.structs.replace(settings, api_signup_max_wait_ms=60_000, api_signup_deadline_ms=120_000)
    key = {"Idempotency-Key": "retry-storm-1"}
    async with serving(patient) as http:
        answers = await asyncio.gather(
            *(http.post("/v1/create_user", json=signup_body(), headers=key) for _ in range(6))
        )
    assert [answer.status_code for answer in answers] == [200] * 6
    assert len({answer.text for answer in answers}) == 1
    assert await count(db, users) == 1 == await count(db, outbox) == await count(db, idempotency_keys)


async def test_the_same_key_with_another_body_is_refused(client, db) -> None:
    key = {"Idempotency-Key": "k-1"}
    assert (await client.post("/v1/create_user", json=signup_body(), headers=key)).status_code == 200
    other = await client.post("/v1/create_user", json=signup_body("bob", "bob@example.com"), headers=key)

    assert other.status_code == 422
    assert other.json()["fields"] == [
        {"field": "Idempotency-Key", "message": "used before with another request body"}
    ]
    assert await count(db, users) == 1


async def test_an_error_is_not_stored_a_retry_runs_again(client, db) -> None:
    await client.post("/v1/create_user", json=signup_body())
    key = {"Idempotency-Key": "k-2"}
    taken = signup_body(email="other@example.com")
    assert (await client.post("/v1/create_user", json=taken, headers=key)).status_code == 409
    assert (await client.post("/v1/create_user", json=taken, headers=key)).status_code == 409
    assert await count(db, idempotency_keys) == 0


@pytest.mark.parametrize("key", ["", "x" * 256, "a key with spaces", "ключ"])
async def test_a_malformed_key_is_a_400_naming_the_header(client, db, key) -> None:
    response = await client.post(
        "/v1/create_user", json=signup_body(), headers={"Idempotency-Key": key.encode()}
    )
    assert response.status_code == 400, response.text
    assert await count(db, users) == 0


async def test_the_key_is_never_stored_or_logged(client, db, sensitive) -> None:
    secret_key = f"key-{uuid.uuid4()}"
    sensitive.append(secret_key)
    response = await client.post(
        "/v1/create_user", json=signup_body(), headers={"Idempotency-Key": secret_key}
    )
    assert response.status_code == 200
    async with db.connect() as connection:
        row = (await connection.execute(idempotency_keys.select())).one()
    assert secret_key not in (row.key_hash, row.fingerprint) and b"correct horse" not in row.response


async def test_a_database_reader_cannot_test_a_password_guess_against_the_fingerprint(client, db) -> None:
    """Keys are the client's choice and often guessable; with the key, the table must still not confirm a
    guessed password: the fingerprint is keyed by the server's secret and leaves the password out."""
    key = "1"
    sent = {**signup_body(), "password": "correct horse"}
    raw = json.dumps(sent).encode()
    headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
    assert (await client.post("/v1/create_user", content=raw, headers=headers)).status_code == 200
    async with db.connect() as connection:
        row = (await connection.execute(idempotency_keys.select())).one()
    for guess in ("wrong guess", "correct horse"):
        body = json.dumps({**sent, "password": guess}).encode()
        assert row.fingerprint != hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
    # Not over the password at all: a retry that changes only the password is the same request.
    retry = json.dumps({**sent, "password": "another one"}).encode()
    replayed = await client.post("/v1/create_user", content=retry, headers=headers)
    assert replayed.status_code == 200 and replayed.headers["idempotent-replayed"] == "true"


async def test_a_client_that_leaves_before_the_commit_leaves_no_user(db, settings, log_tee) -> None:
    async def slow_commit() -> None:
        await asyncio.sleep(1)

    start = len(log_tee.lines)
    async with serving(settings, create_app(settings, before_commit=slow_commit)) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/v1/create_user", json=signup_body(), timeout=0.3)

        async def shed_logged() -> bool:
            return any('"client_gone"' in line for line in log_tee.lines[start:])

        await wait_for(shed_logged, timeout=10, what="the signup to be shed")
    assert await count(db, users) == 0 and await count(db, outbox) == 0


@asynccontextmanager
async def full_queue(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Admission]:
    """The API's admission, with its one slot at work and its one wait place taken by this test."""
    gate = Admission(concurrency=1, max_wait_s=60, deadline_s=60, max_waiting=1)
    monkeypatch.setattr(app_module, "build_admission", lambda _settings: gate)
    hold, busy = asyncio.Event(), asyncio.Event()

    async def working() -> None:
        async with gate.slot(client_gone=asyncio.Event()):
            busy.set()
            await hold.wait()

    worker = asyncio.create_task(working())
    await busy.wait()
    place = gate.enter()
    try:
        yield gate
    finally:
        place.leave()
        hold.set()
        await worker


def shed_total(reason: str) -> float:
    return REGISTRY.get_sample_value("signup_api_shed_total", {"reason": reason}) or 0.0


async def test_a_signup_whose_body_has_not_arrived_holds_no_place_in_the_queue(
    settings: Settings, db: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One slot, at work (held by the test), and one wait place: free, unless a slow body takes it.
    gate = Admission(concurrency=1, max_wait_s=60, deadline_s=60, max_waiting=1)
    monkeypatch.setattr(app_module, "build_admission", lambda _settings: gate)
    hold = asyncio.Event()

    async def working() -> None:
        async with gate.slot(client_gone=asyncio.Event()):
            await hold.wait()

    worker = asyncio.create_task(working())
    async with serving(settings) as http:
        # A client that sends its head and then nothing of the body it announced.
        _, writer = await asyncio.open_connection(http.base_url.host, http.base_url.port)
        writer.write(
            b"POST /v1/create_user HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n"
        )
        await writer.drain()
        complete = asyncio.create_task(http.post("/v1/create_user", json=signup_body()))

        async def queued_or_refused() -> bool:  # the complete signup holds the wait place, or was shed
            if complete.done():
                return True
            place = gate.try_enter()
            if place is None:
                return True
            place.leave()
            return False

        await wait_for(queued_or_refused, timeout=10, what="the complete signup to queue or be refused")
        hold.set()
        answer = await complete
        writer.close()
    await worker
    assert answer.status_code == 200, answer.text
    assert await count(db, users) == 1


async def test_a_full_queue_refuses_a_retry_with_a_key_without_looking_it_up(
    settings: Settings, db: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    async with serving(settings) as http:
        first = await http.post("/v1/create_user", json=signup_body(), headers=key)
    assert first.status_code == 200
    before = shed_total("queue_full")
    async with full_queue(monkeypatch), serving(settings) as http:
        refused = await http.post("/v1/create_user", json=signup_body(), headers=key)
    # A stored answer is not looked for: a flood of retries with keys costs the database nothing.
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert shed_total("queue_full") - before == 1
    async with serving(settings) as http:  # room again: the retry gets the original answer
        again = await http.post("/v1/create_user", json=signup_body(), headers=key)
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert await count(db, users) == 1
