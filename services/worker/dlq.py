"""``signup dlq list`` and ``signup dlq replay ID | --all``: look at and requeue dead-lettered messages."""

from __future__ import annotations

import argparse
import asyncio

import asyncpg

from services.worker.handled import event_id_of
from shared.broker import DeadLetter, StreamsBroker, create_broker
from shared.database import asyncpg_dsn
from shared.settings import Settings


def _username(letter: DeadLetter) -> str:
    args = letter.message.args
    if args and isinstance(args[0], dict):
        return str(args[0].get("username", "?"))
    return "?"


def _all(broker: StreamsBroker) -> list[DeadLetter]:
    letters: list[DeadLetter] = []
    while page := broker.dead_letters(after=letters[-1].entry_id if letters else "-"):
        letters += page
    return letters


def _list(broker: StreamsBroker) -> int:
    letters = _all(broker)
    if not letters:
        print("no dead-lettered messages")
        return 0
    print("message_id                            actor              username        retries  dead_at  error")
    for letter in letters:
        print(
            f"{letter.message.message_id:<37} {letter.message.actor_name:<18} {_username(letter):<15} "
            f"{letter.message.options.get('retries', 0):>7}  {letter.dead_at.isoformat()}  {letter.error}"
        )
    return 0


_REOPEN = "UPDATE outbox SET handled_at = NULL WHERE event_id = ANY($1::uuid[])"


async def reopen(database_url: str, message_ids: list[str]) -> None:
    """Clear ``handled_at`` on the outbox rows of these messages (set when they were dead-lettered), so that
    reconciliation watches over the replay as over a first publish (DESIGN §13)."""
    event_ids = [event_id for event_id in map(event_id_of, message_ids) if event_id is not None]
    connection = await asyncpg.connect(asyncpg_dsn(database_url), timeout=10)
    try:
        await connection.execute(_REOPEN, event_ids)
    finally:
        await connection.close()


def _replay(broker: StreamsBroker, *, message_id: str | None, database_url: str) -> int:
    letters = [letter for letter in _all(broker) if message_id in (None, letter.message.message_id)]
    if not letters:
        print(f"no dead-lettered message {message_id}" if message_id else "no dead-lettered messages")
        return 1 if message_id else 0
    # First, so that a replay handled at once is not un-handled afterwards; a replay that then fails is
    # still a dead letter, which reconciliation leaves alone.
    asyncio.run(reopen(database_url, [letter.message.message_id for letter in letters]))
    for letter in letters:
        broker.replay(letter)
        print(f"replayed {letter.message.message_id} to {letter.queue}")
    return 0


def run(settings: Settings, args: argparse.Namespace) -> int:
    broker = create_broker(settings)
    try:
        if args.dlq_command == "list":
            return _list(broker)
        return _replay(
            broker, message_id=None if args.all else args.message_id, database_url=settings.database_url
        )
    finally:
        broker.close()
