"""Fixtures for the integration tests of the API, and tracing into memory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence

import httpx
import msgspec
import pytest
import uvicorn
from litestar import Litestar
from litestar.testing import AsyncTestClient
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
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


class ModuleExporter(SpanExporter):
    """Exports to the exporter of the test module that records spans; drops them between such modules."""

    def __init__(self) -> None:
        self.target: InMemorySpanExporter | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS if self.target is None else self.target.export(spans)


@pytest.fixture(scope="session")
def module_exporter() -> ModuleExporter:
    """Tracing on for the rest of this process, through OpenTelemetry's public API, which sets the global
    provider once per process: the first module that records spans turns it on, later tests' spans are
    dropped (so tests/unit/test_telemetry.py checks what an untraced process does in a fresh one)."""
    into = ModuleExporter()
    assert configure_tracing("test", processor=SimpleSpanProcessor(into))
    return into


async def resends_done(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    """Wait until the resend requests ``client``'s app answered have run (they run after their answer, on
    the app's own event loop: the test client's)."""

    async def idle() -> bool:
        return bool(client.app.state.resends.pending == 0)

    await wait_for(idle, timeout=10, what="the queued resends to run")


@pytest.fixture(scope="module")
def exporter(module_exporter: ModuleExporter) -> Iterator[InMemorySpanExporter]:
    """Spans into memory, with asyncpg's, for this module's tests only; dropped (and SQL uninstrumented)
    after them."""
    asyncpg = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    if not asyncpg.is_instrumented_by_opentelemetry:
        asyncpg.instrument()
    module_exporter.target = exporter = InMemorySpanExporter()
    yield exporter
    module_exporter.target = None
    asyncpg.uninstrument()


@pytest.fixture
def spans(exporter: InMemorySpanExporter, db: AsyncEngine) -> InMemorySpanExporter:
    """The exporter, emptied after the database was (so that the fixture's SQL is not among the spans)."""
    exporter.clear()
    return exporter


@contextlib.asynccontextmanager
async def serving(settings: Settings, app: Litestar | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """The real app under uvicorn on a free port, in this event loop, and a client for it.

    Litestar's test client runs one request at a time; this serves requests concurrently, as production does,
    and a client can really go away.
    """
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app or create_app(settings), host="127.0.0.1", port=port, log_config=None, access_log=False
        )
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
def worker_settings(settings: Settings) -> Settings:
    """The test settings with short retry backoffs and two worker threads."""
    return msgspec.structs.replace(
        settings, worker_min_backoff_ms=100, worker_max_backoff_ms=2000, worker_threads=2
    )


@pytest.fixture
async def served(settings: Settings, db: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the real app served by uvicorn on the test database, emptied for this test."""
    async with serving(settings) as http:
        yield http
