"""The lab's strategies and faults (``lab.strategies``) against the real PostgreSQL, Redis and worker.

What the course's strategies put in Redis (and what the outbox does not) is the substance of the lab's
comparison: a message for every signup, even one that rolls back, and no signup at all while Redis is down.
"""

from __future__ import annotations

import time
import uuid

import pytest
import redis.asyncio
import sqlalchemy as sa
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from lab.strategies.faults import SKIP_RETRY_HANDLERS
from lab.strategies.knobs import Knobs
from lab.strategies.serve import api_factory
from shared.database import outbox, users
from shared.settings import Settings
from tests.support import RedisServer, held_messages, running_worker, verify_message, wait_logged

BODY = {
    "username": "alice",
    "full_name": "Alice Liddell",
    "email": "alice@example.com",
    "password": "pw-123456",
}


async def count(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


def queued(redis_url: str) -> dict[str, list[dict[str, object]]]:
    """Every Dramatiq message in Redis as a dict, by queue (``critical``, the delay queue ``critical.DQ``)."""
    return {queue: [m.asdict() for m in found] for queue, found in held_messages(redis_url).items()}


def lab_app(settings: Settings, **knobs: object) -> Litestar:
    """The API as ``python -m lab.strategies api`` builds it with these knobs."""
    return api_factory(Knobs(**knobs))(settings)  # type: ignore[arg-type]


async def post_signup(settings: Settings, **knobs: object) -> tuple[int, dict[str, str]]:
    app = lab_app(settings, **knobs)
    async with AsyncTestClient(app) as client:
        response = await client.post("/v1/create_user", json=BODY, headers={"X-Request-ID": "trace-lab"})
    return response.status_code, dict(response.headers)


@pytest.mark.parametrize(("strategy", "queue"), [("immediate", "critical"), ("fixed_delay", "critical.DQ")])
async def test_course_strategy_enqueues_one_message_and_writes_no_outbox_row(
    settings, db, strategy, queue
) -> None:
    before_ms = time.time() * 1000
    status, _ = await post_signup(settings, dispatch_strategy=strategy, task_process_in_ms=10_000)

    assert status == 200
    assert await count(db, users) == 1 and await count(db, outbox) == 0
    messages = queued(settings.redis_url)
    assert sum(len(found) for found in messages.values()) == 1
    [message] = messages[queue]
    assert (message["actor_name"], message["args"]) == ("send_verify_email", ({"username": "alice"},))
    options = message["options"]
    assert isinstance(options, dict) and options["trace_id"] == "trace-lab"
    uuid.UUID(str(message["message_id"]))
    if strategy == "fixed_delay":
        assert before_ms + 10_000 <= options["eta"] <= time.time() * 1000 + 10_000


@pytest.mark.parametrize("strategy", ["immediate", "fixed_delay"])
async def test_redis_down_fails_the_signup_with_503_and_writes_no_user(
    settings, db, redis_server: RedisServer, strategy
) -> None:
    redis_server.stop()
    try:
        app = lab_app(settings, dispatch_strategy=strategy)
        async with AsyncTestClient(app) as client:
            signup = await client.post("/v1/create_user", json=BODY)
            ready = await client.get("/readyz")
    finally:
        redis_server.start()
    assert signup.status_code == 503 and int(signup.headers["retry-after"]) > 0
    assert "Traceback" not in signup.text
    assert ready.status_code == 503 and ready.json()["redis"].startswith("unavailable")
    assert await count(db, users) == 0


async def test_readyz_checks_redis_under_a_course_strategy(settings, db) -> None:
    async with AsyncTestClient(lab_app(settings, dispatch_strategy="immediate")) as c:
        assert (await c.get("/readyz")).json() == {"database": "ok", "redis": "ok"}


async def test_rolled_back_signup_leaves_a_phantom_message_under_fixed_delay(settings, db) -> None:
    status, _ = await post_signup(settings, dispatch_strategy="fixed_delay", fault_rollback_ratio=1.0)

    assert status == 503
    assert await count(db, users) == 0
    phantom = queued(settings.redis_url)["critical.DQ"]
    assert [message["args"] for message in phantom] == [({"username": "alice"},)]


async def test_rolled_back_signup_leaves_nothing_under_outbox(settings, db) -> None:
    status, _ = await post_signup(settings, dispatch_strategy="outbox", fault_rollback_ratio=1.0)

    assert status == 503
    assert await count(db, users) == 0 and await count(db, outbox) == 0
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        assert await client.keys("signup:*") == []
    finally:
        await client.aclose()


async def test_skip_retry_drops_a_missing_users_message(worker_settings, db, sink, log_tee) -> None:
    start = len(log_tee.lines)
    with running_worker(worker_settings, handlers=SKIP_RETRY_HANDLERS) as broker:
        broker.enqueue(verify_message("ghost"))
        await wait_logged(log_tee, "user not found; dropping the message (SkipRetry)", since=start)
        assert broker.dead_letters() == []
    assert sink.attempts == []
