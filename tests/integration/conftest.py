"""Fixtures for the integration tests of the API, and tracing into memory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.app import create_app
from shared.settings import Settings
from shared.telemetry import configure_tracing
from tests.support import serving


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
