"""A resend end to end in one process: API, relay and worker on real PostgreSQL, Redis and SMTP.

After the first link expired, a resend brings an email with a new working link, and the old link then
answers 410 saying a newer email was sent.
"""

from __future__ import annotations

from typing import Any

import msgspec
import sqlalchemy as sa
from litestar.testing import AsyncTestClient

from services.api.app import create_app
from shared.database import users, verify_emails
from shared.settings import Settings
from signup_cli.trace import timeline
from tests.support import Delivery, SmtpSink, link_in, running_relay, running_worker, signup_body, wait_for


async def test_a_resend_after_expiry_brings_a_working_link_and_retires_the_old(
    settings: Settings, db, sink: SmtpSink, sensitive
) -> None:
    settings = msgspec.structs.replace(
        settings, resend_min_interval_s=0, worker_min_backoff_ms=100, worker_threads=2
    )

    async def emails() -> list[Delivery]:
        return list(sink.received)

    async with AsyncTestClient(create_app(settings)) as client, running_relay(settings):
        with running_worker(settings):
            assert (await client.post("/v1/create_user", json=signup_body())).status_code == 200
            (first,) = await wait_for(emails, timeout=10, what="the signup's email")
            async with db.begin() as connection:  # 15 minutes later
                await connection.execute(verify_emails.update().values(expired_at=sa.func.now()))
            old = link_in(first)
            sensitive.append(old["secret_code"])
            expired = await client.get("/v1/verify_email", params=old)
            assert expired.status_code == 410 and "expired" in expired.json()["error"]

            response = await client.post("/v1/resend_verify_email", json={"email": "alice@example.com"})
            assert response.status_code == 202
            mails = await wait_for(lambda: _at_least(emails, 2), timeout=10, what="the second email")
    second = mails[1]
    new = link_in(second)
    sensitive.append(new["secret_code"])
    assert new != old and second.message_id != first.message_id
    async with AsyncTestClient(create_app(settings)) as client:
        superseded = await client.get("/v1/verify_email", params=old)
        assert superseded.status_code == 410 and "newer" in superseded.json()["error"]
        verified = await client.get("/v1/verify_email", params=new)
        assert (verified.status_code, verified.json()) == (200, {"is_verified": True})
    async with db.connect() as connection:
        assert (await connection.execute(sa.select(users.c.is_email_verified))).scalar_one()
    found = await timeline(settings, "alice")
    assert found is not None
    steps, facts = found
    assert any(what.startswith("resend requested") for _, what in steps)
    first_id, second_id = old["email_id"], new["email_id"]
    assert f"verify email {first_id}: superseded by {second_id} (its link answers 410)" in facts
    assert f"verify email {second_id}: used (verified the address)" in facts


async def _at_least(probe: Any, count: int) -> list[Delivery]:
    found = await probe()
    return found if len(found) >= count else []
