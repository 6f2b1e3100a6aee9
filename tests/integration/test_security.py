"""Hostile input and the verification link: no one gets in where they should not, and nothing leaks.

Most tests insert verify_emails rows directly, so that the API's side of the link (single use, expiry,
constant-time comparison) is tested on its own; the worker's side (where codes come from, what reaches the
email's headers) is tested through its use case with a mailer that records instead of sending.
"""

from __future__ import annotations

import hmac
import json
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from email import message_from_bytes

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.worker.errors import PermanentError
from shared.database import outbox, users, verify_emails
from shared.keys import code_digest, server_key, verification_code
from tests.support import (
    RecordingMailer,
    count,
    finished,
    link_in,
    render,
    resends_done,
    running_relay,
    running_worker,
    signup_body,
    worker_sends,
)


async def add_user(client, *, username: str = "alice", email: str = "alice@example.com") -> None:
    response = await client.post("/v1/create_user", json=signup_body(username=username, email=email))
    assert response.status_code == 200, response.text


async def add_code(
    db: AsyncEngine, *, username: str = "alice", code: str, expires_in: timedelta = timedelta(minutes=15)
) -> int:
    """Insert a verify_emails row as the worker would, returning its id."""
    async with db.begin() as connection:
        email_id: int = (
            await connection.execute(
                verify_emails.insert()
                .values(
                    username=username,
                    email=f"{username}@example.com",
                    code_sha256=code_digest(code),
                    event_id=uuid.uuid4(),
                    expired_at=datetime.now(UTC) + expires_in,
                )
                .returning(verify_emails.c.id)
            )
        ).scalar_one()
    return email_id


async def verified(db: AsyncEngine, username: str = "alice") -> bool:
    async with db.connect() as connection:
        query = sa.select(users.c.is_email_verified).where(users.c.username == username)
        return bool((await connection.execute(query)).scalar_one())


async def click(client, email_id: int, code: str):
    return await client.get("/v1/verify_email", params={"email_id": email_id, "secret_code": code})


# --- the verification link ---------------------------------------------------------------------------


async def test_the_database_refuses_a_code_column_that_is_not_a_sha256_digest(client, db) -> None:
    await add_user(client)
    async with db.begin() as connection:
        row = verify_emails.insert().values(
            username="alice",
            email="alice@example.com",
            code_sha256=secrets.token_urlsafe(48),  # a code, not a digest
            event_id=uuid.uuid4(),
            expired_at=datetime.now(UTC),
        )
        with pytest.raises(IntegrityError, match="verify_emails_code_sha256_hex"):
            await connection.execute(row)


async def test_a_database_reader_cannot_verify_with_what_the_row_holds(
    client, db, settings, sensitive
) -> None:
    """The row keeps the code's SHA-256 only: whoever reads the table (a backup, a replica, an injection)
    has nothing to put in a link."""
    await add_user(client)
    mailer = await worker_sends(db, settings)
    query = link_query(mailer)
    sensitive.append(query.split("secret_code=")[1])
    async with db.connect() as connection:
        row = (await connection.execute(sa.select(verify_emails))).one()
    assert query.split("secret_code=")[1] not in str(tuple(row))
    for stolen in (row.code_sha256, row.code_sha256[:43]):
        assert (await click(client, row.id, stolen)).status_code == 404
    assert not await verified(db)
    assert (await client.get(f"/v1/verify_email?{query}")).status_code == 200


async def test_a_code_verifies_once_and_a_second_click_changes_nothing(client, db, sensitive) -> None:
    code = secrets.token_urlsafe(32)
    sensitive.append(code)
    await add_user(client)
    email_id = await add_code(db, code=code)

    first = await click(client, email_id, code)
    assert (first.status_code, first.json()) == (200, {"is_verified": True})
    assert await verified(db)
    # Later the address is unverified again (say it changed): the old link must not verify it a second time.
    async with db.begin() as connection:
        await connection.execute(users.update().values(is_email_verified=False))
    again = await click(client, email_id, code)
    assert (again.status_code, again.json()) == (200, {"is_verified": True})
    assert not await verified(db)


async def test_a_wrong_code_and_an_unknown_id_answer_alike_and_verify_nothing(client, db) -> None:
    code = secrets.token_urlsafe(32)
    await add_user(client)
    email_id = await add_code(db, code=code)

    answers = [
        await click(client, email_id, guess)
        for guess in (code[:-1], code + "x", code[:16], code.upper(), " " + code, "%")
    ]
    unknown = await click(client, email_id + 1, code)
    assert {(r.status_code, r.json()["error"]) for r in [*answers, unknown]} == {
        (404, "unknown verification link")
    }
    assert not await verified(db)


async def test_one_users_code_does_not_verify_another(client, db) -> None:
    await add_user(client)
    await add_user(client, username="bob", email="bob@example.com")
    alice_code, bob_code = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    await add_code(db, code=alice_code)
    bob_id = await add_code(db, username="bob", code=bob_code)

    assert (await click(client, bob_id, alice_code)).status_code == 404
    assert not await verified(db, "bob") and not await verified(db, "alice")


async def test_an_expired_code_is_410_and_verifies_nothing(client, db) -> None:
    code = secrets.token_urlsafe(32)
    await add_user(client)
    email_id = await add_code(db, code=code, expires_in=timedelta(seconds=-1))

    response = await click(client, email_id, code)
    assert response.status_code == 410 and "expired" in response.json()["error"]
    # A guesser learns nothing from expiry: a wrong code for an expired link is still "unknown".
    assert (await click(client, email_id, code[::-1])).status_code == 404
    assert not await verified(db)
    async with db.connect() as connection:
        assert (await connection.execute(sa.select(verify_emails.c.is_used))).scalar_one() is False


async def test_the_code_is_compared_in_constant_time(client, db, monkeypatch) -> None:
    """Every answer costs one constant-time comparison of the guess's digest against a stored digest:
    a wrong code, an unknown id (against a stand-in digest) and the right code alike."""
    calls: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    code = secrets.token_urlsafe(32)
    await add_user(client)
    email_id = await add_code(db, code=code)

    guess = secrets.token_urlsafe(32)
    assert (await click(client, email_id, guess)).status_code == 404
    assert (await click(client, email_id + 1, guess)).status_code == 404
    assert (await click(client, email_id, code)).status_code == 200
    guessed, right = code_digest(guess).encode(), code_digest(code).encode()
    assert [given for _, given in calls] == [guessed, guessed, right]
    expected = [stored for stored, _ in calls]
    assert expected[0] == expected[2] == right
    assert expected[1] != right and len(expected[1]) == len(right)


# --- the worker's side of the link --------------------------------------------------------------------


async def test_each_message_gets_a_256_bit_code_keyed_by_the_worker_secret(
    client, db, settings, sensitive
) -> None:
    await add_user(client)
    queries = [link_query(await worker_sends(db, settings)), link_query(await worker_sends(db, settings))]
    codes = [query.split("secret_code=")[1] for query in queries]
    sensitive.extend(codes)
    assert len(set(codes)) == 2 and all(len(code) == 43 for code in codes)  # 32 bytes, base64url
    async with db.connect() as connection:
        rows = (await connection.execute(sa.select(verify_emails).order_by(verify_emails.c.id))).all()
    key = server_key(settings.worker_code_secret, setting="WORKER_CODE_SECRET")
    assert codes == [verification_code(key, row.event_id) for row in rows]
    assert verification_code(b"another key" * 3, rows[0].event_id) != codes[0]


def link_query(mailer: RecordingMailer) -> str:
    """The query string of the verification link in the one email ``mailer`` recorded."""
    text = mailer.sent[-1].get_body(("plain",))
    assert text is not None
    link = next(word for word in str(text.get_content()).split() if "/v1/verify_email?" in word)
    return link.split("?", 1)[1]


async def test_a_code_the_worker_sent_verifies_once(client, db, settings, sensitive) -> None:
    await add_user(client)
    mailer = await worker_sends(db, settings)
    query = link_query(mailer)
    sensitive.append(query.split("secret_code=")[1])

    first = await client.get(f"/v1/verify_email?{query}")
    assert first.status_code == 200 and await verified(db)
    async with db.begin() as connection:
        await connection.execute(users.update().values(is_email_verified=False))
    assert (await client.get(f"/v1/verify_email?{query}")).status_code == 200
    assert not await verified(db)


# --- header injection ---------------------------------------------------------------------------------

# Each would add a header (or end the headers) if it reached the email's To or a header built from a name.
BREAKS = ["\r\n", "\n", "\r", "\x00", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\u2028", "\u2029"]
INJECTIONS = [
    *[("full_name", f"Alice{brk}Bcc: evil@example.com") for brk in BREAKS],
    *[("email", f"alice@example.com{brk}Bcc: evil@example.com") for brk in BREAKS],
    ("email", "alice\r\n@example.com"),
    ("email", '"alice\r\nBcc: evil"@example.com'),
    ("email", "alice@example.com>\r\nBcc: <evil@example.com"),
    ("email", "alice@example.com,evil@example.com"),
    ("email", "Alice <alice@example.com>"),
    ("username", "alice\r\nbcc"),
    ("password", "correct\r\nhorse"),
]


@pytest.mark.parametrize(("field", "value"), INJECTIONS, ids=[repr(value) for _, value in INJECTIONS])
async def test_line_breaks_and_control_characters_are_refused(client, db, field, value) -> None:
    response = await client.post("/v1/create_user", json={**signup_body(), field: value})
    assert response.status_code == 400, response.text
    assert field in [entry["field"] for entry in response.json()["fields"]]
    assert await count(db, users) == 0 and await count(db, outbox) == 0


@pytest.mark.parametrize("brk", BREAKS)
def test_the_message_builder_refuses_a_line_break_in_the_recipient(settings, brk) -> None:
    hostile = f"alice@example.com{brk}Bcc: evil@example.com"
    try:
        message = render("verify_email", "en", settings=settings, to=hostile)
    except PermanentError:
        return  # refused outright, and dead-lettered at once by the worker
    # Accepted only if it cannot become a header of its own once on the wire.
    parsed = message_from_bytes(message.as_bytes())
    assert parsed.get_all("Bcc") is None and len(parsed.get_all("To") or []) == 1


@pytest.mark.parametrize("brk", [brk for brk in BREAKS if brk != "\x00"])  # PostgreSQL text holds no NUL
async def test_a_hostile_full_name_in_the_database_stays_in_the_body(client, db, settings, brk) -> None:
    """Even a name that bypassed the API (an old row, a manual fix) cannot add a header to the email."""
    await add_user(client)
    async with db.begin() as connection:
        await connection.execute(users.update().values(full_name=f"Alice{brk}Bcc: evil@example.com<b>"))
    mailer = await worker_sends(db, settings)

    parsed = message_from_bytes(mailer.sent[0].as_bytes())
    assert parsed.get_all("Bcc") is None and parsed.get_all("To") == ["alice@example.com"]
    assert sorted(parsed.keys()) == sorted(
        [
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "Auto-Submitted",
            "Content-Language",
            "MIME-Version",
            "Content-Type",
        ]
    )
    html = mailer.sent[0].get_body(("html",))
    assert html is not None and "<b>" not in html.get_content()


# --- SQL metacharacters -------------------------------------------------------------------------------

META = ["'", '";--', "%", "_", "\\"]
# What each field's rules allow: the rest must be a 400 for that field, never a 5xx.
ACCEPTED = {("username", "_"), ("full_name", "'"), ("email", "'"), ("email", "%"), ("email", "_")} | {
    ("password", meta) for meta in META
}


def with_meta(field: str, meta: str) -> dict[str, object]:
    values = {
        "username": f"bob{meta}x",
        "full_name": f"Bob{meta}Smith",
        "email": f"bob{meta}x@example.com",
        "password": f"pass{meta}word",
    }
    return {**signup_body(username="bob", email="bob@example.com"), field: values[field]}


@pytest.mark.parametrize("meta", META)
@pytest.mark.parametrize("field", ["username", "full_name", "email", "password"])
async def test_sql_metacharacters_are_stored_verbatim_or_refused(client, db, field, meta, sensitive) -> None:
    body = with_meta(field, meta)
    sensitive.append(str(body["password"]))
    response = await client.post("/v1/create_user", json=body)

    if (field, meta) not in ACCEPTED:
        assert response.status_code == 400, response.text
        assert [entry["field"] for entry in response.json()["fields"]] == [field]
        assert await count(db, users) == 0
        return
    assert response.status_code == 200, response.text
    async with db.connect() as connection:
        row = (await connection.execute(sa.select(users))).one()
    sensitive.append(row.hashed_password)
    assert (row.username, row.full_name, row.email) == (body["username"], body["full_name"], body["email"])
    assert PasswordHasher().verify(row.hashed_password, str(body["password"]))


async def test_like_wildcards_match_only_themselves(client, db) -> None:
    await add_user(client, username="a_c", email="x_y@example.com")
    await add_user(client, username="abc", email="xay@example.com")
    await add_user(client, username="a_cc", email="x%y@example.com")
    assert await count(db, users) == 3


@pytest.mark.parametrize("code", [*META, "' OR '1'='1", "x' UNION SELECT secret_code FROM verify_emails--"])
async def test_sql_in_the_verification_link_is_just_a_wrong_code(client, db, code) -> None:
    await add_user(client)
    email_id = await add_code(db, code=secrets.token_urlsafe(32))
    assert (await click(client, email_id, code)).status_code == 404
    response = await client.get("/v1/verify_email", params={"email_id": "1 OR 1=1", "secret_code": code})
    assert response.status_code == 400
    assert not await verified(db)


# --- oversized and deeply nested bodies ---------------------------------------------------------------


async def test_a_chunked_body_over_the_limit_is_413_without_content_length(client, db, settings) -> None:
    """Drive the ASGI app as a server does with ``Transfer-Encoding: chunked``: no length is announced."""
    chunks = [
        b'{"username": "alice", "full_name": "',
        *[b"A" * 1024] * (settings.api_max_body_bytes // 1024 + 2),
    ]
    incoming = [{"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks]
    incoming.append({"type": "http.request", "body": b'"}', "more_body": False})
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/create_user",
        "raw_path": b"/v1/create_user",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    await client.app(scope, receive, send)
    assert sent[0]["status"] == 413
    assert incoming, "the whole body was read before it was refused"
    assert await count(db, users) == 0


# Each body, and the answer it gets: 413 when it is over API_MAX_BODY_BYTES (16 KiB), else 400 naming what
# is wrong with it (the body as a whole, or the field).
HOSTILE_BODIES = {
    "nested arrays in a field": (
        b'{"username": ' + b"[" * 7000 + b"]" * 7000 + b"}",
        400,
        ("body", "JSON nested too deeply"),
    ),
    "nested objects": (b'{"a":' * 3000 + b"1" + b"}" * 3000, 413, None),
    "huge number": (b'{"password": ' + b"9" * 15000 + b"}", 400, ("body", "malformed JSON")),
    "huge exponent": (b'{"password": 1e999999999}', 400, ("body", "malformed JSON")),
    "a thousand unknown fields": (
        json.dumps({f"f{i}": i for i in range(1000)}).encode(),
        400,
        ("f0", "unknown field"),
    ),
    "field far over its limit": (
        json.dumps({**signup_body(), "password": "p" * 15000}).encode(),
        400,
        ("password", "Expected `str` of length <= 100"),
    ),
    "lone surrogate": (b'{"password": "\\ud800aaaaaaaa"}', 400, ("body", "malformed JSON")),
    "NUL in a key": (b'{"user\\u0000name": "alice"}', 400, ("user\x00name", "unknown field")),
    "duplicate keys": (
        b'{"username": "alice", "username": "Bad Name!"}',
        400,
        ("username", "may contain only lowercase letters, digits and _"),
    ),
}


@pytest.mark.parametrize(
    ("body", "status", "first_field"), HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys()
)
async def test_hostile_bodies_get_a_4xx_that_names_the_fault(
    client, db, body: bytes, status: int, first_field: tuple[str, str] | None
) -> None:
    response = await client.post(
        "/v1/create_user", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    named = [(field["field"], field["message"]) for field in response.json().get("fields", [])]
    assert named[:1] == ([first_field] if first_field else [])
    assert await count(db, users) == 0


# --- nothing secret in the logs -----------------------------------------------------------------------


async def test_no_password_hash_code_or_email_in_any_log_line(client, db, log_tee, sensitive) -> None:
    start = len(log_tee.lines)
    sensitive += ["correct horse", "alice@example.com", "ALICE@example.com"]
    await add_user(client)
    taken = await client.post("/v1/create_user", json=signup_body(username="bob", email="ALICE@example.com"))
    assert taken.status_code == 200  # answered as a new signup; only a notice is written
    conflict = await client.post("/v1/create_user", json=signup_body(email="bob@example.com"))
    assert conflict.status_code == 409
    invalid = await client.post("/v1/create_user", json=signup_body(email="alice@example.com\n"))
    assert invalid.status_code == 400
    code = secrets.token_urlsafe(32)
    email_id = await add_code(db, code=code)
    sensitive.append(code)
    assert (await click(client, email_id, code[:-1] + "!")).status_code == 404
    assert (await click(client, email_id, code)).status_code == 200
    async with db.connect() as connection:
        sensitive.append((await connection.execute(sa.select(users.c.hashed_password))).scalar_one())
    # The autouse fixture fails the test on any of these values in a log line; make sure there were lines.
    assert len(log_tee.lines) - start >= 5


async def test_an_unexpected_database_error_logs_no_parameters(client, db, log_tee, sensitive) -> None:
    """A 500 logs the exception; SQLAlchemy would put the statement's parameters (hash, email) in it."""
    sensitive += ["correct horse", "mallory@example.com", "$argon2id$"]
    async with db.begin() as connection:
        await connection.execute(
            sa.text("ALTER TABLE users ADD CONSTRAINT security_test CHECK (full_name <> 'Mallory Hostile')")
        )
    try:
        body = {
            **signup_body(username="mallory", email="mallory@example.com"),
            "full_name": "Mallory Hostile",
        }
        response = await client.post("/v1/create_user", json=body)
    finally:
        async with db.begin() as connection:
            await connection.execute(sa.text("ALTER TABLE users DROP CONSTRAINT security_test"))
    assert response.status_code == 500 and "Traceback" not in response.text
    assert any("unhandled error" in line for line in log_tee.lines[-20:])


async def test_no_secret_or_address_in_any_span(spans, client, db: AsyncEngine, settings, sink) -> None:
    """Span attributes and events leave the process (to a collector): none may hold what logs may not."""
    async with running_relay(settings):
        with running_worker(settings):
            await add_user(client)
            done = await finished(spans, "smtp send")
    async with db.connect() as connection:
        user = (await connection.execute(sa.select(users))).one()
        digest = (await connection.execute(sa.select(verify_emails.c.code_sha256))).scalar_one()
    code = link_in(sink.received[-1])["secret_code"]  # its "smtp send" span has ended: it was received
    exported = json.dumps([json.loads(span.to_json()) for span in done])
    assert "smtp send" in exported and "INSERT INTO users" in exported
    for secret in ("alice@example.com", "correct horse", user.hashed_password, code, digest):
        assert secret not in exported


@pytest.mark.parametrize(
    "email",
    [
        "x%y@example.com",  # LIKE wildcards: would match x_y@ and xay@ if compared with LIKE
        "x_y@Example.com",
        "' OR '1'='1@example.com",
        "x@example.com'; DELETE FROM users;--",
        "x_y@example.com\r\nBcc: evil@example.com",
    ],
)
async def test_a_hostile_resend_address_queues_nothing_for_anyone_else(client, db, email) -> None:
    """SQL, wildcards and line breaks in the resend's address: a 400 or the usual 202, and at most the
    email of the one user whose address it is (x_y@example.com, whose signup is long enough ago)."""
    await add_user(client, username="a_c", email="x_y@example.com")
    await add_user(client, username="abc", email="xay@example.com")
    async with db.begin() as connection:
        await connection.execute(
            users.update().values(created_at=sa.func.now() - sa.text("interval '1 hour'"))
        )
    response = await client.post("/v1/resend_verify_email", json={"email": email})
    assert response.status_code in (202, 400), response.text
    await resends_done(client)
    async with db.connect() as connection:
        payloads = (
            (await connection.execute(sa.select(outbox.c.payload).order_by(outbox.c.id))).scalars().all()
        )
    resent = [payload["username"] for payload in payloads[2:]]
    assert resent == (["a_c"] if email == "x_y@Example.com" else [])
    assert await count(db, users) == 2
