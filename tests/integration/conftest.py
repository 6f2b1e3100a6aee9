"""Fixtures for the integration tests of the API."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.app import create_app
from shared.settings import Settings


@pytest.fixture
async def client(settings: Settings, db: AsyncEngine) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    """The real app on the test database and Redis, emptied for this test."""
    async with AsyncTestClient(create_app(settings)) as client:
        yield client
