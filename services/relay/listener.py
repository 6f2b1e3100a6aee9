"""Wake-ups: a dedicated connection LISTENs on channel ``outbox`` and reconnects whenever it is lost.

A notification is only a hint that rows committed; the relay polls as well, so a missed one costs at
most a poll interval.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from shared.logging import get_logger

CHANNEL = "outbox"
APPLICATION_NAME = "signup-relay-listen"
RECONNECT_DELAY_S = 0.5

log = get_logger()


async def listen_forever(*, dsn: str, wake: asyncio.Event, connect_timeout_s: float = 5.0) -> None:
    """Set ``wake`` on every notification; on connection loss, reconnect (and wake, as one may be missed).

    Runs until cancelled; never raises for a lost or refused connection.
    """
    while True:
        lost = asyncio.Event()
        try:
            connection = await asyncpg.connect(
                dsn, timeout=connect_timeout_s, server_settings={"application_name": APPLICATION_NAME}
            )
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            log.warning("relay.listen_connect_failed", error=repr(exc))
            await asyncio.sleep(RECONNECT_DELAY_S)
            continue
        try:
            connection.add_termination_listener(_on_notify(lost))
            await connection.add_listener(CHANNEL, _on_notify(wake))
            log.debug("relay.listening", channel=CHANNEL)
            wake.set()  # whatever committed while we were not listening
            await lost.wait()
            log.warning("relay.listen_connection_lost")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("relay.listen_failed", error=repr(exc))
        finally:
            connection.terminate()
        await asyncio.sleep(RECONNECT_DELAY_S)


def _on_notify(event: asyncio.Event) -> Any:
    """A callback for asyncpg that sets ``event``, whatever it is passed."""

    def callback(*_args: object) -> None:
        event.set()

    return callback
