"""shared/telemetry.py: the OTEL_* variables as OpenTelemetry documents them, and the context a row stores."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider

from shared import telemetry
from shared.telemetry import context_from, current_trace_context, trace_id_of

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture(autouse=True)
def no_otel_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(name, raising=False)


# A fresh interpreter: OpenTelemetry sets the global tracer provider once per process, and the integration
# tests' spans turn tracing on for the rest of theirs.
CONFIGURE = """
from shared.telemetry import configure_tracing, current_trace_context, tracing_enabled
print(configure_tracing("api"), tracing_enabled(), current_trace_context())
"""


def configure_in_a_fresh_process() -> subprocess.CompletedProcess[str]:
    """``configure_tracing("api")`` in a new interpreter with this test's environment; it prints what it
    returned, whether tracing is on and the trace context a row would store."""
    return subprocess.run([sys.executable, "-c", CONFIGURE], capture_output=True, text=True, timeout=120)


def test_no_exporter_means_tracing_off_and_nothing_installed() -> None:
    done = configure_in_a_fresh_process()
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "False", "None"]  # None: the row's column stays NULL


def test_sdk_disabled_wins_over_an_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "TRUE")
    done = configure_in_a_fresh_process()
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[:2] == ["False", "False"]


def test_an_unknown_exporter_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    done = configure_in_a_fresh_process()
    assert done.returncode != 0 and "ValueError: OTEL_TRACES_EXPORTER='zipkin'" in done.stderr


def test_console_prints_one_span_per_line_on_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", " Console ")
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    processor = telemetry._processor_from_environment()
    assert processor is not None
    provider = TracerProvider(shutdown_on_exit=False)  # not the global one: nothing leaks into other tests
    provider.add_span_processor(processor)
    with provider.get_tracer("test").start_as_current_span("one"):
        pass
    provider.force_flush()
    [line] = stderr.getvalue().splitlines()
    assert json.loads(line)["name"] == "one"
    provider.shutdown()


def test_a_stored_context_gives_its_trace_id_and_a_missing_one_none() -> None:
    assert trace_id_of({"traceparent": TRACEPARENT}) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id_of(None) is None and context_from({}) is None
    assert context_from({"traceparent": "00-zz-00-01"}) is None


def test_a_span_inside_a_provider_is_captured_as_w3c_context() -> None:
    tracer = TracerProvider().get_tracer("test")  # not the global one: nothing leaks into other tests
    with tracer.start_as_current_span("write") as span:
        carrier = current_trace_context()
    assert carrier is not None and set(carrier) <= {"traceparent", "tracestate"}
    assert trace_id_of(carrier) == format(span.get_span_context().trace_id, "032x")
