"""The signup API against the real PostgreSQL: one commit holds the user and its outbox row."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import msgspec
import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.app import create_app
from services.api.metrics import serve_metrics
from shared.database import outbox, users
from tests.support import LogTee, count, free_port, serving, signup_body


async def test_signup_writes_one_user_and_one_outbox_row(client, db, sensitive) -> None:
    sensitive += ["correct horse", "alice@example.com"]
    response = await client.post("/v1/create_user", json=signup_body(), headers={"X-Request-ID": "trace-1"})

    assert response.status_code == 200, response.text
    user = response.json()["user"]
    assert user["username"] == "alice" and user["email"] == "alice@example.com"
    assert user["password_changed_at"] == "0001-01-01T00:00:00Z"
    assert "password" not in user and "hashed_password" not in user
    assert response.headers["x-request-id"] == "trace-1"
    async with db.connect() as connection:
        row = (await connection.execute(sa.select(outbox))).one()
        hashed = (await connection.execute(sa.select(users.c.hashed_password))).scalar_one()
    assert await count(db, users) == 1
    assert (row.actor, row.queue, row.payload, row.trace_id) == (
        "send_verify_email",
        "critical",
        {"username": "alice"},
        "trace-1",
    )
    assert row.published_at is None and row.event_id is not None
    assert hashed.startswith("$argon2id$")
    sensitive.append(hashed)


async def test_a_failure_after_both_inserts_leaves_neither(settings, db) -> None:
    written: list[int] = []

    class ExplodingAfterTheOutboxRow:
        """The real dispatcher writes the outbox row; then, before the commit, this one fails."""

        def __init__(self, real: Any) -> None:
            self.real, self.needs_redis = real, real.needs_redis

        async def dispatch(self, session: AsyncSession, *args: Any, **kwargs: Any) -> None:
            await self.real.dispatch(session, *args, **kwargs)
            rows = await session.execute(sa.select(sa.func.count()).select_from(outbox))
            written.append(rows.scalar_one())
            raise RuntimeError("dispatch failed")

        async def close(self) -> None:
            await self.real.close()

    app = create_app(settings)
    app.state.dispatcher = ExplodingAfterTheOutboxRow(app.state.dispatcher)
    async with AsyncTestClient(app) as client:
        response = await client.post("/v1/create_user", json=signup_body())
    assert response.status_code == 500
    assert "Traceback" not in response.text and response.json()["trace_id"]
    assert written == [1], "the outbox row was written in the transaction before the failure"
    assert await count(db, users) == 0
    assert await count(db, outbox) == 0


async def test_fifty_concurrent_signups_with_one_username(db, settings) -> None:
    # Served by uvicorn (the test client runs one request at a time), with admission patient enough that
    # none is shed: what is tested is the unique constraint under concurrency.
    patient = msgspec.structs.replace(
        settings, api_signup_max_waiting=50, api_signup_max_wait_ms=60_000, api_signup_deadline_ms=120_000
    )
    async with serving(patient) as http:
        responses = await asyncio.gather(
            *(http.post("/v1/create_user", json=signup_body(email=f"a{i}@example.com")) for i in range(50))
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [409] * 49
    conflict = next(r for r in responses if r.status_code == 409).json()
    assert conflict["fields"] == [{"field": "username", "message": "username is already taken"}]
    assert await count(db, outbox) == 1


BAD_INPUTS = [
    ("missing field", {k: v for k, v in signup_body().items() if k != "full_name"}, "full_name"),
    ("wrong type", signup_body(password=12345678), "password"),
    ("username too short", signup_body(username="ab"), "username"),
    ("username too long", signup_body(username="a" * 101), "username"),
    ("password too short", signup_body(password="short"), "password"),
    ("password too long", signup_body(password="p" * 101), "password"),
    ("full_name empty", {**signup_body(), "full_name": ""}, "full_name"),
    ("invalid email", signup_body(email="not-an-email"), "email"),
    ("email too long", signup_body(email="a" * 190 + "@example.com"), "email"),
    ("uppercase username", signup_body(username="Alice"), "username"),
    ("space in username", signup_body(username="al ice"), "username"),
    ("newline after username", signup_body(username="alice\n"), "username"),
    ("digits in full_name", {**signup_body(), "full_name": "Alice 2"}, "full_name"),
    ("CRLF in full_name", {**signup_body(), "full_name": "Alice\r\nBcc: evil@example.com"}, "full_name"),
    ("unknown field", signup_body(is_admin=True), "is_admin"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_INPUTS, ids=[case for case, _, _ in BAD_INPUTS])
async def test_bad_input_is_400_naming_the_field_and_writes_nothing(client, db, case, body, field) -> None:
    response = await client.post("/v1/create_user", json=body)
    assert response.status_code == 400, response.text
    assert field in [entry["field"] for entry in response.json()["fields"]]
    assert await count(db, users) == 0 and await count(db, outbox) == 0


async def test_every_bad_field_is_reported_at_once(client, db) -> None:
    body = {"username": "A", "full_name": "1", "email": "x", "password": 1}
    response = await client.post("/v1/create_user", json=body)
    assert response.status_code == 400
    assert sorted(entry["field"] for entry in response.json()["fields"]) == sorted(body)


@pytest.mark.parametrize("raw", [b"{", b"[]", b"null", b'"text"', b"\xff\xfe"])
async def test_malformed_body_is_400(client, db, raw: bytes) -> None:
    response = await client.post("/v1/create_user", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["fields"][0]["field"] == "body"


async def test_oversized_body_is_413(client, db, settings) -> None:
    body = json.dumps(signup_body(full_name="A" * settings.api_max_body_bytes)).encode()
    response = await client.post(
        "/v1/create_user", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert await count(db, users) == 0


async def test_database_down_is_503_with_retry_after(settings, log_tee: LogTee) -> None:
    down = msgspec.structs.replace(
        settings, database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/nope"
    )
    async with AsyncTestClient(create_app(down)) as client:
        signup = await client.post("/v1/create_user", json=signup_body())
        ready = await client.get("/readyz")
        alive = await client.get("/healthz")
    assert signup.status_code == 503 and int(signup.headers["retry-after"]) > 0
    assert ready.status_code == 503 and ready.json()["database"].startswith("unavailable")
    assert alive.status_code == 200
    for response in (signup, ready):
        assert "Traceback" not in response.text and 'File "' not in response.text


async def test_readyz_healthz_metrics_and_schema(client) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"database": "ok"}
    await client.post("/v1/create_user", json=signup_body())
    port = serve_metrics(port=free_port(), host="127.0.0.1")
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    assert "signup_api_signups_total" in metrics and "resend_requests_total" in metrics
    spec = (await client.get("/schema/openapi.json")).json()
    body_schema = spec["paths"]["/v1/create_user"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert body_schema["required"] == ["username", "full_name", "email", "password"]
    assert set(spec["paths"]) >= {"/v1/create_user", "/v1/verify_email", "/healthz", "/readyz"}


async def test_trace_id_comes_from_traceparent_or_is_generated(client) -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    response = await client.get("/healthz", headers={"traceparent": traceparent})
    assert response.headers["x-request-id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    generated = (await client.get("/healthz", headers={"X-Request-ID": "bad id; DROP"})).headers[
        "x-request-id"
    ]
    assert len(generated) == 32 and generated != "bad id"


async def test_one_signups_log_lines_carry_its_request_id(client, log_tee: LogTee, sensitive) -> None:
    sensitive += ["correct horse", "alice@example.com"]
    start = len(log_tee.lines)
    response = await client.post(
        "/v1/create_user", json=signup_body(), headers={"X-Request-ID": "trace-logs"}
    )
    assert response.status_code == 200
    lines = [json.loads(line) for line in log_tee.lines[start:]]
    mine = [
        line for line in lines if line.get("username") == "alice" or line.get("path") == "/v1/create_user"
    ]
    assert len(mine) >= 2
    assert {line["request_id"] for line in mine} == {"trace-logs"}
    for line in lines:
        assert {"timestamp", "level", "service", "event", "request_id"} <= set(line)


@pytest.mark.parametrize(
    ("method", "path", "status"), [("DELETE", "/v1/create_user", 405), ("GET", "/v2/nope", 404)]
)
async def test_answers_from_the_router_carry_the_trace_id_too(
    client, log_tee: LogTee, method: str, path: str, status: int
) -> None:
    """Litestar answers an unknown path or method before any middleware; the trace id must survive that."""
    start = len(log_tee.lines)
    response = await client.request(method, path, headers={"X-Request-ID": "trace-router"})
    assert response.status_code == status
    assert response.headers["x-request-id"] == "trace-router"
    assert response.json()["trace_id"] == "trace-router"
    assert len(log_tee.lines) > start
    last = json.loads(log_tee.lines[-1])
    assert {
        "event": "request",
        "path": path,
        "status": status,
        "request_id": "trace-router",
    }.items() <= last.items()
