"""The language of a user's emails: chosen at signup, stored with the user, used by every email to them; the
notice to a taken address's owner is in the language of the signup that met it."""

from __future__ import annotations

from datetime import timedelta

import msgspec
import sqlalchemy as sa

from services.worker.actors import WorkerContext
from services.worker.handlers import send_signup_notice, send_verify_email
from shared.database import outbox, users
from shared.messages import SendSignupNotice, SendVerifyEmail
from tests.support import RecordingMailer, resends_done, signup_body


async def language_of(db, username: str) -> str:
    async with db.connect() as connection:
        return str(await connection.scalar(sa.select(users.c.language).where(users.c.username == username)))


async def deliver_all(db, settings) -> RecordingMailer:
    """Run the worker's handler for every outbox row, oldest first, as the relay and worker would."""
    mailer = RecordingMailer()
    context = WorkerContext(settings=settings, mailer=mailer, engine=db)
    async with db.connect() as connection:
        rows = (await connection.execute(sa.select(outbox).order_by(outbox.c.id))).all()
    for row in rows:
        kind = {SendVerifyEmail.actor: SendVerifyEmail, SendSignupNotice.actor: SendSignupNotice}[row.actor]
        handler = send_verify_email if kind is SendVerifyEmail else send_signup_notice
        async with db.connect() as connection:
            await handler(
                msgspec.convert(row.payload, kind),
                context=context,
                message_id=str(row.event_id),
                connection=connection,
            )
    return mailer


async def test_accept_language_picks_the_stored_language(client, db, settings) -> None:
    headers = {"Accept-Language": "fr-CH, fr;q=0.9, de-CH;q=0.8, en;q=0.5"}
    assert (await client.post("/v1/create_user", json=signup_body(), headers=headers)).status_code == 200
    assert await language_of(db, "alice") == "de"  # no French templates: the next one there are
    [sent] = (await deliver_all(db, settings)).sent
    assert sent["Content-Language"] == "de" and "E-Mail-Adresse" in sent["Subject"]


async def test_the_explicit_field_wins_and_a_resend_is_in_the_stored_language(client, db, settings) -> None:
    body = signup_body(language="ar")
    response = await client.post("/v1/create_user", json=body, headers={"Accept-Language": "de"})
    assert response.status_code == 200, response.text
    assert await language_of(db, "alice") == "ar"
    async with db.begin() as connection:  # the signup as if a few minutes old: a resend is allowed
        await connection.execute(users.update().values(created_at=users.c.created_at - timedelta(minutes=5)))
    # The resend comes without any language, from a client that prefers another one: the stored one counts.
    resend = await client.post(
        "/v1/resend_verify_email", json={"email": "alice@example.com"}, headers={"Accept-Language": "en"}
    )
    assert resend.status_code == 202
    await resends_done(client)
    sent = (await deliver_all(db, settings)).sent
    assert [mail["Content-Language"] for mail in sent] == ["ar", "ar"]


async def test_without_any_preference_the_language_is_english(client, db) -> None:
    assert (await client.post("/v1/create_user", json=signup_body())).status_code == 200
    assert await language_of(db, "alice") == "en"
    # null is the field left out (the OpenAPI schema allows it), and the header then decides
    body = signup_body(username="bob", email="bob@example.com", language=None)
    response = await client.post("/v1/create_user", json=body, headers={"Accept-Language": "de"})
    assert response.status_code == 200, response.text
    assert await language_of(db, "bob") == "de"


async def test_a_malformed_language_field_is_refused(client, db) -> None:
    response = await client.post("/v1/create_user", json=signup_body(language="de\r\nBcc: x"))
    assert response.status_code == 400
    assert [entry["field"] for entry in response.json()["fields"]] == ["language"]


async def test_the_notice_to_a_taken_address_is_in_the_language_of_the_signup_that_met_it(
    client, db, settings
) -> None:
    assert (await client.post("/v1/create_user", json=signup_body())).status_code == 200
    async with db.begin() as connection:
        await connection.execute(users.update().values(is_email_verified=True))
    taken = signup_body(username="mallory")
    assert (
        await client.post("/v1/create_user", json=taken, headers={"Accept-Language": "ar"})
    ).status_code == 200
    sent = (await deliver_all(db, settings)).sent
    notice = sent[-1]
    assert notice["Content-Language"] == "ar" and str(notice["To"]) == "alice@example.com"
    assert "«alice»" in str(notice.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert await language_of(db, "alice") == "en"  # the owner's own stays as it was
