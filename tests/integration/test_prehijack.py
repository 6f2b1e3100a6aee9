"""No account pre-hijacking: an unverified account does not hold its address against the address's owner.

The attack: Mallory signs up with Victoria's address and Mallory's password, before Victoria does. Victoria
signs up, asks for a resend, clicks the link in her mailbox — and must end up with her own account verified,
Mallory's claim gone, never with Mallory's account verified.
"""

from __future__ import annotations

from typing import Any

import msgspec
import sqlalchemy as sa
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.app import create_app
from shared.database import outbox, users, verify_emails
from shared.keys import code_digest
from shared.messages import SendSignupNotice, SendVerifyEmail
from shared.settings import Settings
from tests.support import (
    Delivery,
    SmtpSink,
    link_in,
    resends_done,
    running_relay,
    running_worker,
    signup_body,
    wait_for,
)

VICTIM = "victoria@example.com"
MALLORY = signup_body(username="mallory", email=VICTIM, password="mallorys password")
VICTORIA = signup_body(username="victoria", email=VICTIM, password="victorias password")


async def accounts(db: AsyncEngine) -> dict[str, bool]:
    async with db.connect() as connection:
        rows = (await connection.execute(sa.select(users.c.username, users.c.is_email_verified))).all()
    return {row.username: row.is_email_verified for row in rows}


async def age_accounts(db: AsyncEngine, username: str, hours: float) -> None:
    async with db.begin() as connection:
        await connection.execute(
            users.update()
            .where(users.c.username == username)
            .values(created_at=users.c.created_at - sa.text(f"interval '{hours} hours'"))
        )


async def test_the_owner_signs_up_resends_and_verifies_her_own_account(
    settings: Settings, db: AsyncEngine, sink: SmtpSink
) -> None:
    settings = msgspec.structs.replace(settings, worker_threads=2, resend_min_interval_s=0)

    def mails() -> list[Delivery]:
        return list(sink.received)

    async def count(n: int) -> list[Delivery]:
        return mails() if len(mails()) >= n else []

    async with AsyncTestClient(create_app(settings)) as client:
        with running_worker(settings):
            async with running_relay(settings, relay_poll_interval_ms=50):
                assert (await client.post("/v1/create_user", json=MALLORY)).status_code == 200
                await wait_for(lambda: count(1), timeout=15, what="Mallory's verification email")
                # Victoria's signup is a signup of her own, not an answer for a held address.
                assert (await client.post("/v1/create_user", json=VICTORIA)).status_code == 200
                await wait_for(lambda: count(2), timeout=15, what="Victoria's verification email")
                assert await accounts(db) == {"mallory": False, "victoria": False}
                # Victoria asks for a resend and clicks the newest link in her mailbox.
                assert (
                    await client.post("/v1/resend_verify_email", json={"email": VICTIM})
                ).status_code == 202
                await resends_done(client)
                newest = (await wait_for(lambda: count(3), timeout=15, what="the resent email"))[-1]
                assert "victoria" in newest.message.as_string()
                clicked = await client.get("/v1/verify_email", params=link_in(newest))
                assert clicked.status_code == 200, clicked.text
                # Mallory's claim gave way: her account is gone, and her link verifies nothing.
                assert await accounts(db) == {"victoria": True}
                mallorys = link_in(mails()[0])
                assert (await client.get("/v1/verify_email", params=mallorys)).status_code == 404
                assert await accounts(db) == {"victoria": True}


async def test_an_unverified_claim_gives_way_after_the_setting(client, db: AsyncEngine, settings) -> None:
    assert settings.unverified_account_ttl_hours == 24
    assert (await client.post("/v1/create_user", json=MALLORY)).status_code == 200
    async with db.begin() as connection:  # Mallory's link, as her email would carry it, still fresh
        await connection.execute(
            verify_emails.insert().values(
                username="mallory",
                email=VICTIM,
                code_sha256=code_digest(CODE),
                event_id=__import__("uuid").uuid4(),
                expired_at=sa.func.now() + sa.text("interval '1 hour'"),
                sent_at=sa.func.now(),
            )
        )
    await age_accounts(db, "mallory", 24.5)
    link = await _link_of(db, "mallory")
    # A day later the claim no longer verifies, gets no resend, and its username is free again.
    assert (await client.get("/v1/verify_email", params=link)).status_code == 410
    await client.post("/v1/resend_verify_email", json={"email": VICTIM})
    await resends_done(client)
    assert await _actors(db) == [SendVerifyEmail.actor]
    again = signup_body(username="mallory", email="mallory@example.com")
    assert (await client.post("/v1/create_user", json=again)).status_code == 200
    assert await accounts(db) == {"mallory": False}


async def test_a_verified_account_holds_its_address_forever(client, db: AsyncEngine) -> None:
    assert (await client.post("/v1/create_user", json=VICTORIA)).status_code == 200
    async with db.begin() as connection:
        await connection.execute(users.update().values(is_email_verified=True))
    await age_accounts(db, "victoria", 24 * 400)
    assert (await client.post("/v1/create_user", json=MALLORY)).status_code == 200
    assert await accounts(db) == {"victoria": True}
    assert await _actors(db) == [SendVerifyEmail.actor, SendSignupNotice.actor]


CODE = "m" * 43


async def _link_of(db: AsyncEngine, username: str) -> dict[str, Any]:
    async with db.connect() as connection:
        email_id = (
            await connection.execute(
                sa.select(verify_emails.c.id).where(verify_emails.c.username == username)
            )
        ).scalar_one()
    return {"email_id": email_id, "secret_code": CODE}


async def _actors(db: AsyncEngine) -> list[str]:
    async with db.connect() as connection:
        return list((await connection.execute(sa.select(outbox.c.actor).order_by(outbox.c.id))).scalars())
