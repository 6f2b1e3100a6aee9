"""Fixtures for the integration tests of the API, and tracing into memory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import uvicorn
from litestar.testing import AsyncTestClient
from opentelemetry import trace
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.app import create_app
from shared.settings import Settings
from shared.telemetry import configure_tracing
from tests.support import free_port, wait_for


@pytest.fixture
async def client(settings: Settings, db: AsyncEngine) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    """The real app on the test database and Redis, emptied for this test."""
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


async def resends_done(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    """Wait until the resend requests ``client``'s app answered have run (they run after their answer, on
    the app's own event loop: the test client's)."""

    async def idle() -> bool:
        return bool(client.app.state.resends.pending == 0)

    await wait_for(idle, timeout=10, what="the queued resends to run")


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory, for this module's tests only; off again (and uninstrumented) after them."""
    exporter = InMemorySpanExporter()
    assert configure_tracing("test", processor=SimpleSpanProcessor(exporter))
    yield exporter
    AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
    # The API sets the global provider once per process; tests put it back the way OpenTelemetry's own
    # test utilities do, so that later tests run untraced as in production without an exporter.
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


@pytest.fixture
def spans(exporter: InMemorySpanExporter, db: AsyncEngine) -> InMemorySpanExporter:
    """The exporter, emptied after the database was (so that the fixture's SQL is not among the spans)."""
    exporter.clear()
    return exporter


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The real app under uvicorn on a free port, in this event loop, and a client for it.

    Litestar's test client runs one request at a time; this serves requests concurrently, as production does,
    and a client can really go away.
    """
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    task = asyncio.create_task(server.serve())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:

            async def up() -> bool:
                return server.started

            await wait_for(up, timeout=10, what="uvicorn to start")
            yield http
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=15)


@pytest.fixture
async def served(settings: Settings, db: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the real app served by uvicorn on the test database, emptied for this test."""
    async with serving(settings) as http:
        yield http
