"""The link opened in a browser: a small HTML page per state, a strict CSP, the code never on the page."""

from __future__ import annotations

import re
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from shared.database import outbox, users, verify_emails
from shared.keys import code_digest
from tests.support import BROWSER, add_link, is_verified, open_link, resends_done


async def test_opening_the_link_verifies_nothing_until_the_button(client, db, sensitive) -> None:
    """A mail scanner or link preview fetches the link as a browser does: that must verify nothing."""
    email_id, code = await add_link(db)
    sensitive.append(code)
    opened = await client.get(
        "/v1/verify_email", params={"email_id": email_id, "secret_code": code}, headers=BROWSER
    )
    assert opened.status_code == 200 and opened.headers["cache-control"] == "no-store"
    assert opened.text.count("<button") == 1 and opened.text.count("<form") == 1
    assert not await is_verified(db)
    pressed = await open_link(client, email_id, code)
    assert "<h1>Email verified</h1>" in pressed.text and await is_verified(db)


async def test_a_cross_site_post_verifies_nothing(client, db) -> None:
    email_id, code = await add_link(db)
    response = await client.post(
        "/v1/confirm_email",
        data={"email_id": str(email_id), "secret_code": code},
        headers={**BROWSER, "Sec-Fetch-Site": "cross-site"},
    )
    assert response.status_code == 403 and not await is_verified(db)


def assert_page(response: Any, status: int, title: str, *secrets_: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "'unsafe-inline'" not in csp
    assert response.headers["referrer-policy"] == "no-referrer"
    html = response.text
    assert f"<h1>{title}</h1>" in html and "<script" not in html and "http" not in html
    for value in secrets_:
        assert value not in html
    return str(html)


async def test_verified_then_already_verified(client, db, sensitive) -> None:
    email_id, code = await add_link(db)
    sensitive.append(code)
    assert_page(await open_link(client, email_id, code), 200, "Email verified", code)
    assert_page(await open_link(client, email_id, code), 200, "Already verified", code)


async def test_expired_offers_a_form_that_asks_for_a_new_email(client, db, sensitive) -> None:
    email_id, code = await add_link(db, expires_in=timedelta(seconds=-1))
    sensitive.append(code)
    async with db.begin() as connection:  # signed up long enough ago for the per-minute limit
        await connection.execute(
            users.update().values(created_at=sa.func.now() - sa.text("interval '1 hour'"))
        )
    html = assert_page(await open_link(client, email_id, code), 410, "This link has expired", code)
    (action,) = re.findall(r'<form method="post" action="([^"]+)">', html)
    assert action == "resend_verify_email"  # relative: the same origin and path prefix as the link
    response = await client.post(
        f"/v1/{action}",
        content=b"email=alice%40example.com",
        headers={**BROWSER, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_page(response, 202, "Check your inbox")
    await resends_done(client)
    async with db.connect() as connection:
        assert (await connection.execute(sa.select(sa.func.count()).select_from(outbox))).scalar_one() == 1


async def test_superseded_says_a_newer_email_was_sent(client, db, sensitive) -> None:
    email_id, code = await add_link(db)
    sensitive.append(code)
    async with db.begin() as connection:
        await connection.execute(
            verify_emails.insert().values(
                username="alice",
                email="alice@example.com",
                code_sha256=code_digest(secrets.token_urlsafe(32)),
                event_id=uuid.uuid4(),
                expired_at=datetime.now(UTC) + timedelta(minutes=15),
                sent_at=datetime.now(UTC),
            )
        )
    assert_page(await open_link(client, email_id, code), 410, "A newer email was sent", code)
    response = await client.get("/v1/verify_email", params={"email_id": email_id, "secret_code": code})
    assert response.json()["error"] == "a newer verification email was sent; use the link in it"


@pytest.mark.parametrize("params", [{"email_id": "1", "secret_code": "wrong"}, {"email_id": "1"}])
async def test_a_wrong_or_cut_link_is_invalid_with_a_form(client, db, params) -> None:
    await add_link(db)
    if "secret_code" in params:  # a whole link: its page's button finds it wrong
        response = await open_link(client, params["email_id"], params["secret_code"])
    else:
        response = await client.get("/v1/verify_email", params=params, headers=BROWSER)
    html = assert_page(response, 404 if "secret_code" in params else 400, "This link does not work")
    assert 'action="resend_verify_email"' in html


async def test_a_json_client_still_gets_json(client, db) -> None:
    email_id, code = await add_link(db)
    response = await client.get("/v1/verify_email", params={"email_id": email_id, "secret_code": code})
    assert (response.headers["content-type"], response.json()) == ("application/json", {"is_verified": True})
