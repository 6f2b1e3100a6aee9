"""The Dramatiq broker every process shares (relay and course strategies enqueue; the worker consumes).

``create_broker(settings)`` builds it; nothing here runs at import time. The worker's entry module sets it
as Dramatiq's global broker before any actor is declared (see services/worker).
"""

from __future__ import annotations

from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (
    AgeLimit,
    AsyncIO,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from shared.settings import Settings

# Dramatiq requeues a dead worker's unacked messages once its heartbeat is older than this and a
# maintenance pass runs. The chance is per million broker commands: the default (1000, one pass per 1000
# polls) can take many minutes. 100_000 is a pass every ~10 polls, so a killed worker's message is
# redelivered within ~30 s; a pass is one cheap Lua script. (It was 50, i.e. rarer than the default: the
# soak lost every message a killed worker held.)
HEARTBEAT_TIMEOUT_MS = 15_000
MAINTENANCE_CHANCE = 100_000

# A message older than this is dropped by AgeLimit; ours must never be, so the limit is a week.
MAX_AGE_MS = 7 * 24 * 3600 * 1000


def create_broker(settings: Settings, *, extra_middleware: list[Middleware] | None = None) -> RedisBroker:
    """A ``RedisBroker`` on ``REDIS_URL`` with retries configured from the ``WORKER_*`` settings."""
    middleware: list[Middleware] = [
        AgeLimit(max_age=MAX_AGE_MS),
        TimeLimit(time_limit=5 * 60 * 1000),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(
            max_retries=settings.worker_max_retries,
            min_backoff=settings.worker_min_backoff_ms,
            max_backoff=settings.worker_max_backoff_ms,
        ),
        CurrentMessage(),
        AsyncIO(),
        *(extra_middleware or []),
    ]
    return RedisBroker(
        url=settings.redis_url,
        middleware=middleware,
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=MAINTENANCE_CHANCE,
    )
