"""Section 7 of ``signup bench``: what OpenTelemetry costs the API, off (the default) and exporting OTLP.

Two ``signup api`` processes (strategy ``outbox``) take the same steady load side by side, so the machine's
changing load hits both alike: one with tracing off (``OTEL_TRACES_EXPORTER`` unset: nothing is installed),
one exporting every span over OTLP/HTTP to a sink in this process that answers 200 and counts requests.
Before OpenTelemetry was added, "off" was the whole API: the off column is today's cost of the API.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from lab.bench.model import BenchPlan, Section, fmt, ms, ratio
from lab.harness.load import generate_load
from lab.harness.measure import latency_of
from lab.harness.stack import Stack

MODES = ("off", "otlp")


class _Collector(BaseHTTPRequestHandler):
    exports = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        type(self).exports += 1
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


@contextmanager
def otlp_sink() -> Iterator[str]:
    """An OTLP/HTTP endpoint on a free loopback port that accepts every export; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _env(mode: str, endpoint: str) -> dict[str, str]:
    if mode == "off":
        return {}
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }


async def tracing_section(*, rate: float, plan: BenchPlan, work_dir: Path, pg: str) -> Section:
    """Section 7: the API's request latency with tracing off and with OTLP export, side by side."""
    _Collector.exports = 0
    with otlp_sink() as endpoint:
        stacks = {
            mode: Stack(
                work_dir=work_dir / f"tracing-{mode}",
                services=("api",),
                env=_env(mode, endpoint),
                pg_admin_url=pg,
            )
            for mode in MODES
        }
        async with stacks["off"], stacks["otlp"]:
            results = await asyncio.gather(
                *(
                    generate_load(stacks[m].api_url, rate=rate / 2, duration_s=plan.duration_s, prefix=m)
                    for m in MODES
                )
            )
    latency = {
        mode: latency_of(s.committed_at - s.sent_at for s in signups if s.accepted)
        for mode, signups in zip(MODES, results, strict=True)
    }
    failed = {
        mode: sum(1 for s in signups if not s.accepted) for mode, signups in zip(MODES, results, strict=True)
    }
    added = ratio(latency["otlp"].p50, latency["off"].p50)
    figures = {
        "off_p50_ms": None if latency["off"].p50 is None else latency["off"].p50 * 1000,
        "otlp_p50_ms": None if latency["otlp"].p50 is None else latency["otlp"].p50 * 1000,
        "otlp_added_median_latency_pct": None if added is None else (added - 1) * 100,
        "otlp_exports": float(_Collector.exports),
    }
    return Section(
        key="tracing",
        title=f"7. Tracing cost in the API ({rate / 2:g}/s each, side by side, {plan.duration_s:g} s)",
        headers=["tracing", "p50 ms", "p95 ms", "p99 ms", "failed"],
        rows=[
            [mode, ms(latency[mode].p50), ms(latency[mode].p95), ms(latency[mode].p99), str(failed[mode])]
            for mode in MODES
        ],
        figures=figures,
        notes=[
            f"OTLP export on adds {fmt(figures['otlp_added_median_latency_pct'], 1)} % to the median "
            f"(target ≤ 10 %); the sink took {_Collector.exports} export requests. Off installs nothing "
            "(no tracer provider, middleware or SQL instrumentation), so off is the API as it was before "
            "tracing (target: within 2 %, which section 2's run-to-run spread bounds).",
        ],
    )
