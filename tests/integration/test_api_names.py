"""Names and addresses as people write them: what POST /v1/create_user accepts, refuses and stores."""

from __future__ import annotations

import unicodedata
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.app import create_app
from shared.database import outbox, users
from shared.messages import SendSignupNotice, SendVerifyEmail
from shared.settings import Settings
from tests.support import signup_body

NAMES = [
    # (full name as sent, stored as, or None when refused)
    ("José García-Núñez", "José García-Núñez"),
    (
        unicodedata.normalize("NFD", "José Garcia"),
        "José Garcia",
    ),  # a combining accent, as some keyboards send
    ("Conan O'Brien", "Conan O'Brien"),
    ("Conan O\u2019Brien", "Conan O\u2019Brien"),
    ("J. R. R. Tolkien", "J. R. R. Tolkien"),
    ("Martin Luther King Jr.", "Martin Luther King Jr."),
    ("Иван Петров", "Иван Петров"),
    ("अनिल कुमार", "अनिल कुमार"),  # Devanagari vowel signs are combining marks, even in NFC
    ("李小龙", "李小龙"),
    ("王力", "王力"),  # a whole Chinese name in two characters; the course's 3-character minimum refused it
    ("Al", "Al"),
    ("Alice  Liddell", None),
    ("Alice--Liddell", None),
    ("-Alice", None),
    ("Alice 2", None),
    ("Alice_Liddell", None),
    ("Alice\tLiddell", None),
    ("Alice\nLiddell", None),
    ("Alice\u0085", None),
    ("\u0301Alice", None),
    ("", None),
    # Lengths count the code points sent, as the OpenAPI schema does; the name is stored composed (NFC).
    ("A\u0300l", "\u00c0l"),
    ("J" + "e\u0301" * 50, None),  # 101 code points sent, 51 once composed
]


@pytest.mark.parametrize(("full_name", "stored"), NAMES)
async def test_full_names(
    client: AsyncTestClient[Any], db: AsyncEngine, full_name: str, stored: str | None
) -> None:
    response = await client.post("/v1/create_user", json=signup_body(full_name=full_name))
    if stored is None:
        assert response.status_code == 400, response.text
        assert [field["field"] for field in response.json()["fields"]] == ["full_name"]
        return
    assert response.status_code == 200, response.text
    assert response.json()["user"]["full_name"] == stored
    async with db.connect() as connection:
        assert (await connection.execute(sa.select(users.c.full_name))).scalar_one() == stored


ADDRESSES = [
    # (address as sent, the API's SMTP_SMTPUTF8, stored as, or None when refused)
    ("Alice@Example.COM", False, "Alice@example.com"),
    ("user@BÜCHER.de", False, "user@bücher.de"),
    ("user@xn--bcher-kva.de", False, "user@bücher.de"),
    ("пользователь@example.com", False, None),
    ("пользователь@example.com", True, "пользователь@example.com"),
    (unicodedata.normalize("NFD", "josé@example.com"), True, "josé@example.com"),
    ("user@example.test", True, None),
]


@pytest.mark.parametrize(("email", "smtputf8", "stored"), ADDRESSES)
async def test_addresses(
    settings: Settings, db: AsyncEngine, email: str, smtputf8: bool, stored: str | None
) -> None:
    app = create_app(msgspec.structs.replace(settings, smtp_smtputf8=smtputf8))
    async with AsyncTestClient(app) as client:
        response = await client.post("/v1/create_user", json=signup_body(email=email))
    if stored is None:
        assert response.status_code == 400, response.text
        assert [field["field"] for field in response.json()["fields"]] == ["email"]
        return
    assert response.status_code == 200, response.text
    assert response.json()["user"]["email"] == stored


async def test_a_non_ascii_local_part_is_refused_with_a_reason(client: AsyncTestClient[Any], db) -> None:
    response = await client.post("/v1/create_user", json=signup_body(email="пользователь@example.com"))
    assert response.status_code == 400
    assert "SMTPUTF8" in response.json()["fields"][0]["message"]


async def test_the_same_address_in_another_normal_form_is_taken(client: AsyncTestClient[Any], db) -> None:
    first = await client.post("/v1/create_user", json=signup_body(email="user@bücher.de"))
    async with db.begin() as connection:  # only a verified account holds its address
        await connection.execute(users.update().values(is_email_verified=True))
    second = await client.post(
        "/v1/create_user",
        json=signup_body(username="bob", email=unicodedata.normalize("NFD", "USER@BÜCHER.de")),
    )
    assert first.status_code == second.status_code == 200
    async with db.connect() as connection:  # the second is the first's address: only a notice was written
        actors = (await connection.execute(sa.select(outbox.c.actor).order_by(outbox.c.id))).scalars().all()
    assert actors == [SendVerifyEmail.actor, SendSignupNotice.actor]


@pytest.fixture
async def client(settings: Settings, db: AsyncEngine) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(create_app(settings)) as client:
        yield client
