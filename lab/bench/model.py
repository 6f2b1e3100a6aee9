"""What every benchmark section returns, and the plan of a full or quick run (no I/O here)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Section:
    """One section's table, its headline figures (ratios included) and notes for the report."""

    key: str
    title: str
    headers: list[str]
    rows: list[list[str]]
    figures: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BenchPlan:
    """Sizes of one run. ``rate``/``duration_s`` drive sections 1 and 2 (capped by the hashing bound)."""

    rate: float
    duration_s: float
    saturation_s: float
    drain_rows: int
    claim_sizes: tuple[int, int]
    claim_repeats: int
    worker_emails: int
    hash_samples: int
    overload_s: float
    idle_s: float = 60
    """How long section 8 leaves each stack idle before it measures one signup."""
    idle_samples: int = 3
    """Idle windows per cell of section 8, each followed by one signup."""
    reconcile_rows: int = 1_000_000
    """Published rows in section 9 (``--reconcile-rows``), of which ``reconcile_unhandled`` not handled."""
    reconcile_unhandled: int = 2_000
    reconcile_repeats: int = 10
    peer_rate: float = 8
    """Signups/s of section 10 (outbox beside Procrastinate), for ``duration_s``."""
    peer_drain: int = 50_000
    """Emails of section 10's backlog, for each side."""
    broker_messages: int = 480
    """Messages each broker option of section 11 carries at ``broker_rate``."""
    broker_rate: float = 8
    broker_idle_s: float = 20
    broker_drain: int = 20_000
    slow_connections: int = 1000
    """Section 13: slow clients held open at once, each trickling a header byte every ``slow_every_s``."""
    slow_every_s: float = 3.0
    slow_header_timeout_s: float = 10.0
    """The API's ``API_HEADER_TIMEOUT_MS`` in section 13 (the default)."""
    slow_window_s: float = 30.0
    flood_clients: int = 64
    """Section 13: clients posting resends for one address for the whole window, at ``flood_rate`` in all."""
    flood_rate: float = 500


FULL = BenchPlan(
    rate=20,
    duration_s=60,
    saturation_s=20,
    drain_rows=50_000,
    claim_sizes=(10_000, 1_000_000),
    claim_repeats=30,
    worker_emails=2_000,
    hash_samples=20,
    overload_s=30,
)
QUICK = BenchPlan(
    rate=4,
    duration_s=3,
    saturation_s=4,
    drain_rows=2_000,
    claim_sizes=(1_000, 20_000),
    claim_repeats=10,
    worker_emails=100,
    hash_samples=3,
    overload_s=3,
    idle_s=3,
    idle_samples=2,
    reconcile_rows=20_000,
    reconcile_unhandled=200,
    reconcile_repeats=3,
    peer_drain=500,
    broker_messages=24,
    broker_idle_s=2,
    slow_connections=50,
    slow_every_s=0.5,
    slow_header_timeout_s=2.0,
    slow_window_s=6.0,
    flood_clients=8,
    flood_rate=100,
    broker_drain=500,
)


def ms(seconds: float | None) -> str:
    """Seconds as milliseconds for a table cell; ``-`` for no value."""
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the denominator is zero."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
