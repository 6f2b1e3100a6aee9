"""A reconciliation pass costs one SQL query and one Redis call for up to RECONCILE_BATCH_SIZE rows, whatever
the number of handled rows; a pass that finds lost messages adds one transaction and one MULTI/EXEC.

Counted on the real servers: asyncpg's query logger sees every statement the relay's pool sends, and a
wrapper around the relay's Redis client every command and pipeline it sends.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import msgspec
import redis

from services.relay import store
from services.relay.publisher import enqueue_batch
from services.relay.relay import ReconcilePass, Relay, build_relay
from shared.broker import StreamsBroker, create_broker
from shared.settings import Settings
from tests.support import fetch

HANDLED, UNHANDLED, BATCH = 5000, 50, 20
LOST = 44  # the 45th unhandled row, in the third page
# Not the pass's own queries: a transaction's brackets, asyncpg's reset of a connection given back to its
# pool, and asyncpg's type introspection (once per connection and type, cached after).
HOUSEKEEPING = (
    "BEGIN",
    "COMMIT",
    "SELECT PG_ADVISORY_UNLOCK_ALL()",
    "SELECT CURRENT_SETTING('JIT')",
    "WITH RECURSIVE TYPEINFO_TREE",
    "SELECT SET_CONFIG('JIT'",
)

_SEED = """
INSERT INTO outbox (event_id, actor, queue, payload, published_at, handled_at)
SELECT gen_random_uuid(), 'send_verify_email', 'critical', jsonb_build_object('username', 'u_' || g),
       now() - interval '1 hour' + make_interval(secs => g::float8 / 1000),
       CASE WHEN $2 THEN now() END
FROM generate_series($3::bigint, $3::bigint + $1 - 1) AS g
"""


class Commands:
    """Counts what a redis-py client sends: one per command, one per pipeline."""

    def __init__(self, client: Any) -> None:
        self.sent: list[str] = []
        execute, pipeline = client.execute_command, client.pipeline

        def counted_execute(*args: Any, **options: Any) -> Any:
            self.sent.append(str(args[0]))
            return execute(*args, **options)

        def counted_pipeline(*args: Any, **options: Any) -> Any:
            self.sent.append("pipeline")
            return pipeline(*args, **options)

        client.execute_command, client.pipeline = counted_execute, counted_pipeline


async def seed(settings: Settings) -> list[str]:
    """Handled rows, then unhandled ones (in publication order) whose messages are in Redis."""
    await fetch(settings, _SEED, HANDLED, True, 1)
    await fetch(settings, _SEED, UNHANDLED, False, HANDLED + 1)
    await fetch(settings, "VACUUM ANALYZE outbox")
    records = await fetch(
        settings,
        "SELECT id, event_id, actor, queue, payload::text AS payload, trace_id FROM outbox "
        "WHERE handled_at IS NULL ORDER BY published_at, id",
    )
    rows = [
        store.OutboxRow(**{**dict(r), "payload": json.loads(r["payload"]), "delay_ms": None}) for r in records
    ]
    broker = create_broker(settings)
    await asyncio.to_thread(enqueue_batch, broker, rows)
    broker.close()
    return [str(r.event_id) for r in rows]


async def test_each_pass_is_one_query_and_one_redis_call_and_walks_the_unhandled_rows(
    settings: Settings, db: Any
) -> None:
    settings = msgspec.structs.replace(settings, reconcile_batch_size=BATCH, reconcile_grace_ms=1000)
    event_ids = await seed(settings)
    client = redis.Redis.from_url(settings.redis_url)
    client.hdel("signup:locators", event_ids[LOST])  # its message is as good as gone
    client.close()

    statements: list[str] = []
    relay: Relay = build_relay(settings)
    assert isinstance(relay.broker, StreamsBroker)

    async def log_queries(connection: Any) -> None:
        connection.add_query_logger(lambda logged: statements.append(logged.query))

    await relay.connect(init=log_queries)
    try:
        relay.broker.locate([])  # nothing sent for no rows
        relay.broker.locate(["warm-up"])  # redis-py loads the script once
        relay.broker.enqueue_many([])  # likewise the publish script
        commands = Commands(relay.broker.client)
        results: list[tuple[ReconcilePass, list[str], list[str]]] = []
        for _ in range(4):
            statements.clear()
            commands.sent.clear()
            done = await relay.reconcile()
            sql = [s for s in statements if not " ".join(s.split()).upper().startswith(HOUSEKEEPING)]
            results.append((done, sql, list(commands.sent)))
    finally:
        await relay.close()

    # Pages of 20, 20 and 10 unhandled rows (the 5,000 handled ones never read), then from the start again.
    assert [r[0] for r in results] == [
        ReconcilePass(checked=20, missing=0, republished=0),
        ReconcilePass(checked=20, missing=0, republished=0),
        ReconcilePass(checked=10, missing=1, republished=1),
        ReconcilePass(checked=20, missing=0, republished=0),
    ]
    for done, sql, sent in results:
        if done.missing:
            assert len(sql) == 2 and sql[1].lstrip().startswith("UPDATE"), "\n".join(
                " ".join(s.split())[:100] for s in sql
            )
            assert sent == ["EVALSHA", "EVALSHA"], sent
        else:
            assert len(sql) == 1 and sql[0].lstrip().startswith("SELECT"), sql
            assert sent == ["EVALSHA"], sent
    [lost] = await fetch(
        settings, "SELECT republish_count FROM outbox WHERE event_id = $1", uuid.UUID(event_ids[LOST])
    )
    assert lost["republish_count"] == 1


async def test_the_candidates_come_from_the_partial_index_of_unhandled_rows(
    settings: Settings, db: Any
) -> None:
    await fetch(settings, _SEED, HANDLED, True, 1)
    await fetch(settings, _SEED, UNHANDLED, False, HANDLED + 1)
    await fetch(settings, "VACUUM ANALYZE outbox")
    plan = await fetch(
        settings,
        "EXPLAIN " + store.CANDIDATES,
        store.CURSOR_START[0],
        store.CURSOR_START[1],
        1000,
        BATCH,
    )
    text = "\n".join(r[0] for r in plan)
    assert "outbox_unhandled_idx" in text and "Seq Scan" not in text, text
