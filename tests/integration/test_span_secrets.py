"""No secret in any span: every endpoint driven with tracing on, every exported span searched (DESIGN §12).

Spans leave the process for a collector, often kept longer and read by more people than the database: a
code in a URL there verifies the address of whoever it was sent to.
"""

from __future__ import annotations

import json
import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.database import users
from tests.support import BROWSER, add_link, finished, open_link, resends_done, signup_body

ADDRESS = "alice@example.com"
PASSWORD = "correct horse"


def exported(spans) -> str:
    """Every finished span as its collector would get it: name, attributes, events, links, status."""
    return json.dumps([json.loads(span.to_json()) for span in spans.get_finished_spans()])


async def test_no_code_password_key_or_address_in_any_span_of_any_endpoint(
    spans, client, db: AsyncEngine, sensitive
) -> None:
    email_id, code = await add_link(db)
    key = f"key-{uuid.uuid4()}"
    sensitive += [code, key, PASSWORD]
    # The link, as JSON client, as browser (the page, then its button), a wrong code, a missing one.
    assert (
        await client.get("/v1/verify_email", params={"email_id": email_id, "secret_code": code})
    ).is_success
    assert (await open_link(client, email_id, code)).is_success
    wrong = await client.get("/v1/verify_email", params={"email_id": email_id, "secret_code": code[::-1]})
    assert wrong.status_code == 404
    bare = await client.get(f"/v1/verify_email?email_id={email_id}&secret_code=", headers=BROWSER)
    assert bare.status_code == 400
    # Signups: a new one with an Idempotency-Key, its replay, a taken address, a bad body.
    new = signup_body(username="bob", email="bob@example.com", password=PASSWORD)
    for _ in range(2):
        answer = await client.post("/v1/create_user", json=new, headers={"Idempotency-Key": key})
        assert answer.status_code == 200
    taken = signup_body(username="carol", email=ADDRESS.upper(), password=PASSWORD)
    assert (await client.post("/v1/create_user", json=taken)).status_code == 200
    bad = signup_body(username="dave", email=f"{ADDRESS}\n", password=PASSWORD)
    assert (await client.post("/v1/create_user", json=bad)).status_code == 400
    # Resends, as JSON and as the pages' form.
    assert (await client.post("/v1/resend_verify_email", json={"email": ADDRESS})).status_code == 202
    form = await client.post("/v1/resend_verify_email", data={"email": "bob@example.com"}, headers=BROWSER)
    assert form.status_code == 202
    await resends_done(client)
    await finished(spans, "POST /v1/resend_verify_email", count=2)
    async with db.connect() as connection:
        hashes = (await connection.execute(sa.select(users.c.hashed_password))).scalars().all()
    hashes = [value for value in hashes if value.startswith("$argon2")]  # add_link's stand-in is "x"

    seen = exported(spans)
    assert "GET /v1/verify_email" in seen and "POST /v1/confirm_email" in seen and "INSERT INTO users" in seen
    assert (
        "/v1/verify_email?email_id=REDACTED&secret_code=REDACTED" in seen
    )  # the URL is kept, its values not
    assert hashes  # bob's, hashed by the API
    for secret in (code, code[::-1], key, PASSWORD, ADDRESS, ADDRESS.upper(), "bob@example.com", *hashes):
        assert secret not in seen, f"{secret[:6]}… reached a span"
