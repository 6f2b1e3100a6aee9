"""OpenTelemetry set-up shared by every process, and the W3C trace context an outbox row carries (DESIGN §12).

``configure_tracing(service=...)`` is called by each service's factory or ``run``, never at import. It reads
the standard variables: ``OTEL_SDK_DISABLED``, ``OTEL_SERVICE_NAME`` (default: the service's own name),
``OTEL_TRACES_EXPORTER`` (``otlp``, ``console`` or ``none``), and through the SDK itself
``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_TRACES_SAMPLER`` and ``OTEL_BSP_*``. With no exporter nothing is
installed: the tracer stays OpenTelemetry's no-op and no instrumentation is added, so tracing costs nothing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from opentelemetry import context, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACER_NAME = "signup-outbox"
# messaging.system of the relay's and the worker's spans: the message format, ids, queues and retries a
# consumer sees are Dramatiq's; Redis is only the store Dramatiq's broker keeps them in.
MESSAGING_SYSTEM = "dramatiq"
# The row carries W3C trace context only (traceparent, tracestate), whatever OTEL_PROPAGATORS says: baggage
# is the caller's and does not belong in a table.
_W3C = TraceContextTextMapPropagator()


def configure_tracing(service: str, *, processor: SpanProcessor | None = None, sql: bool = True) -> bool:
    """Install a global ``TracerProvider`` for ``signup-<service>`` unless tracing is off; return whether on.

    ``processor`` replaces the exporter from the environment (tests pass an in-memory one). ``sql`` adds
    the asyncpg instrumentation. Raises ``ValueError`` for an ``OTEL_TRACES_EXPORTER`` we do not know.
    """
    if tracing_enabled():
        return True
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    processor = processor or _processor_from_environment()
    if processor is None:
        return False
    name = os.environ.get("OTEL_SERVICE_NAME") or f"signup-{service}"
    # The sampler comes from OTEL_TRACES_SAMPLER(_ARG), read by the SDK when none is given here.
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    if sql:
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
    return True


def tracing_enabled() -> bool:
    """Whether this process installed an SDK tracer provider (else every span is a no-op)."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def _processor_from_environment() -> SpanProcessor | None:
    # OpenTelemetry's default for OTEL_TRACES_EXPORTER is otlp; ours is none, so that a process started
    # without a collector neither pays for spans nor logs export errors.
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    exporter: SpanExporter
    if kind == "none":
        return None
    if kind == "console":
        # One span per line on stderr: stdout holds the JSON log lines, one object each.
        exporter = ConsoleSpanExporter(out=sys.stderr, formatter=_one_line)
    elif kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # endpoint, headers and timeout from OTEL_EXPORTER_OTLP_*
    else:
        raise ValueError(f"OTEL_TRACES_EXPORTER={kind!r}: expected otlp, console or none")
    return BatchSpanProcessor(exporter)


def _one_line(span: ReadableSpan) -> str:
    line: str = span.to_json(indent=None)
    return line + "\n"


def tracer() -> trace.Tracer:
    """The project's tracer (a no-op one when tracing is off)."""
    return trace.get_tracer(TRACER_NAME)


def current_trace_context() -> dict[str, str] | None:
    """The current span's ``traceparent`` (and ``tracestate``) as a dict, or None outside a recorded span."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier or None


def context_from(carrier: Mapping[str, str] | None) -> context.Context | None:
    """The context stored by ``current_trace_context``, or None when there is none (an old row)."""
    if not carrier:
        return None
    extracted = _W3C.extract(carrier)
    span_context = trace.get_current_span(extracted).get_span_context()
    return extracted if span_context.is_valid else None


def trace_id_of(carrier: Mapping[str, str] | None) -> str | None:
    """The 32-hex trace id in a stored ``traceparent``, or None."""
    extracted = context_from(carrier)
    if extracted is None:
        return None
    return format(trace.get_current_span(extracted).get_span_context().trace_id, "032x")
