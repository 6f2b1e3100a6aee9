"""Addresses as people write them, sent by the real worker to real SMTP servers with and without SMTPUTF8.

An internationalised domain goes out in its ASCII (IDNA) form unless ``SMTP_SMTPUTF8`` says the server
takes the address as written; a local part that is not ASCII needs SMTPUTF8, and a server without it is a
permanent failure: one attempt, dead-lettered, reason logged.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.database import users
from shared.settings import Settings
from tests.support import Delivery, SmtpSink, received, running_worker, verify_message, wait_for, wait_logged


@pytest.fixture(scope="module")
def ascii_sink() -> Iterator[SmtpSink]:
    """The tests' sink without SMTPUTF8 in its EHLO, like many servers (aiosmtpd offers it by default)."""
    sink = SmtpSink(smtputf8=False)
    sink.start()
    yield sink
    sink.stop()


async def add_user(engine: AsyncEngine, email: str) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            users.insert().values(username="alice", hashed_password="x", full_name="José Núñez", email=email)
        )


DELIVERED = [
    # (stored address, server offers SMTPUTF8, envelope recipient the server sees)
    ("alice@example.com", False, "alice@example.com"),
    ("user@bücher.de", False, "user@xn--bcher-kva.de"),
    ("user@bücher.de", True, "user@xn--bcher-kva.de"),
    ("пользователь@example.com", True, "пользователь@example.com"),
    ("пользователь@пример.рф", True, "пользователь@xn--e1afmkfd.xn--p1ai"),
]


@pytest.mark.parametrize(("address", "smtputf8", "envelope"), DELIVERED)
async def test_an_address_goes_out_in_the_form_the_server_takes(
    settings: Settings, db, sink: SmtpSink, ascii_sink: SmtpSink, address, smtputf8, envelope
) -> None:
    server = sink if smtputf8 else ascii_sink
    server.clear()
    await add_user(db, address)
    with running_worker(_to(settings, server)) as broker:
        broker.enqueue(verify_message())
        (mail,) = await wait_for_mail(server)
    assert mail.recipients == (envelope.lower(),)
    if envelope.isascii():  # the sink parses with compat32, which gives a UTF-8 header back as a Header
        assert mail.message["To"] == envelope


async def test_with_smtputf8_set_the_address_goes_out_as_written_at_signup(
    settings: Settings, db, sink: SmtpSink
) -> None:
    sink.clear()
    await add_user(db, "josé@bücher.de")
    with running_worker(msgspec.structs.replace(_to(settings, sink), smtp_smtputf8=True)) as broker:
        broker.enqueue(verify_message())
        (mail,) = await wait_for_mail(sink)
    assert mail.recipients == ("josé@bücher.de",)


@pytest.mark.parametrize("address", ["пользователь@example.com", "josé@bücher.de"])
async def test_a_server_without_smtputf8_dead_letters_a_non_ascii_local_part_at_once(
    settings: Settings, db, ascii_sink: SmtpSink, log_tee, address
) -> None:
    start = len(log_tee.lines)
    ascii_sink.clear()
    await add_user(db, address)
    message = verify_message()
    with running_worker(_to(settings, ascii_sink)) as broker:
        broker.enqueue(message)
        (line,) = await wait_logged(log_tee, "message dead-lettered", since=start)
        (letter,) = broker.dead_letters()
    assert line["retries"] == 0 and "does not support SMTPUTF8" in line["error"]
    assert letter.message.message_id == message.message_id and "SMTPUTF8" in letter.error
    assert ascii_sink.received == []


def _to(settings: Settings, server: SmtpSink) -> Settings:
    return msgspec.structs.replace(
        settings, smtp_port=server.port, worker_min_backoff_ms=100, worker_threads=2
    )


async def wait_for_mail(server: SmtpSink) -> list[Delivery]:
    return await wait_for(lambda: received(server), timeout=10, what="the email")
