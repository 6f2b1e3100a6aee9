"""How ``signup worker`` builds its Dramatiq ``Worker`` (``main.build_worker``); nothing connects."""

from __future__ import annotations

import pytest

from services.worker.main import DEFAULT_POLL_TIMEOUT_MS, THREAD_WAKE_MS, build_worker
from shared.settings import load_settings


@pytest.mark.parametrize(
    ("environ", "poll_ms"), [({}, DEFAULT_POLL_TIMEOUT_MS), ({"dramatiq_worker_timeout": "20"}, 20)]
)
def test_the_consumers_poll_at_dramatiq_worker_timeout_and_the_threads_wake_every_second(
    environ: dict[str, str], poll_ms: int
) -> None:
    """The two intervals Dramatiq takes from one ``worker_timeout`` are set apart here (DESIGN §5); the seam
    through which Dramatiq hands it to the consumers is tested in tests/integration/test_broker.py."""
    broker, worker = build_worker(load_settings({}), environ)
    try:
        assert broker.poll_ms == poll_ms
        assert worker.worker_timeout == THREAD_WAKE_MS > poll_ms
        assert worker.consumer_whitelist == broker.get_declared_queues() != set()
    finally:
        broker.close()
