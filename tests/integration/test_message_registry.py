"""A message type defined here alone is written, relayed and handled with no change to the services.

This is the registry's promise (shared/messages.py): a new message is a class and a handler. ``Ping`` lives
only in this test module; the real outbox writer, relay and worker carry it end to end on real PostgreSQL
and Redis.
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.database import create_sessionmaker
from shared.messages import Message, SendVerifyEmail, registered
from shared.outbox import add_outbox_event
from shared.settings import Settings
from tests.support import running_relay, running_worker, wait_for

handled_pings: list[tuple[str, str, str]] = []


class Ping(Message, frozen=True):
    """A throw-away message for this test: its own actor, its own queue, its own handler."""

    actor: ClassVar[str] = "test_ping"
    queue: ClassVar[str] = "test_pings"
    handler: ClassVar[str] = "tests.integration.test_message_registry:handle_ping"

    note: str


async def handle_ping(message: Ping, *, context: Any, message_id: str, connection: Any) -> None:
    handled_pings.append((message.note, message_id, context.settings.database_url))


def test_the_registry_holds_every_message_once() -> None:
    assert registered()[0] is SendVerifyEmail and Ping in registered()
    with pytest.raises(TypeError, match="already"):

        class Impostor(Message, frozen=True):
            actor: ClassVar[str] = "send_verify_email"
            queue: ClassVar[str] = "elsewhere"
            handler: ClassVar[str] = "x:y"


async def test_a_new_message_type_is_written_relayed_and_handled(db: AsyncEngine, settings: Settings) -> None:
    handled_pings.clear()
    note = f"hello {uuid.uuid4().hex[:6]}"
    async with create_sessionmaker(db)() as session, session.begin():
        event_id = await add_outbox_event(session, Ping(note=note), trace_id="trace-ping")

    with running_worker(settings) as broker:
        assert "test_pings" in broker.get_declared_queues()
        async with running_relay(settings, relay_poll_interval_ms=50):

            async def any_handled() -> bool:
                return bool(handled_pings)

            await wait_for(any_handled, timeout=20, what="the Ping handler")
    assert handled_pings == [(note, str(event_id), settings.database_url)]
