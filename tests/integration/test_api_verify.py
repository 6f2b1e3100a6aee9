"""GET /v1/verify_email on rows inserted as the worker would: 200 twice, 404 wrong or unknown, 410 late."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.app import create_app
from shared.settings import Settings
from tests.support import add_link, is_verified


@pytest.fixture
async def client(settings: Settings, db: AsyncEngine) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


async def click(client: AsyncTestClient[Any], email_id: int, code: str) -> Any:
    return await client.get("/v1/verify_email", params={"email_id": email_id, "secret_code": code})


async def test_valid_link_verifies_and_a_second_click_answers_the_same(client, db, sensitive) -> None:
    email_id, code = await add_link(db)
    sensitive.append(code)
    first = await click(client, email_id, code)
    second = await click(client, email_id, code)
    assert (first.status_code, first.json()) == (200, {"is_verified": True})
    assert (second.status_code, second.json()) == (200, {"is_verified": True})
    assert await is_verified(db)


async def test_wrong_code_is_404_and_verifies_nothing(client, db) -> None:
    email_id, code = await add_link(db)
    assert (await click(client, email_id, code[:-1] + ("A" if code[-1] != "A" else "B"))).status_code == 404
    assert not await is_verified(db)


async def test_unknown_id_is_404(client, db) -> None:
    email_id, code = await add_link(db)
    assert (await click(client, email_id + 1, code)).status_code == 404


async def test_expired_link_is_410_and_verifies_nothing(client, db) -> None:
    email_id, code = await add_link(db, expires_in=timedelta(seconds=-1))
    assert (await click(client, email_id, code)).status_code == 410
    assert not await is_verified(db)
