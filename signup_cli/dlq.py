"""``signup dlq list``, ``signup dlq replay ID | --all`` and ``signup dlq discard ID``: the dead letters at a
shell, through the same functions as the operator console (``shared/dead_letters.py``)."""

from __future__ import annotations

import argparse
import asyncio
import getpass

from shared import dead_letters
from shared.broker import DeadLetter, StreamsBroker, create_broker
from shared.database import create_engine
from shared.settings import Settings


def _list(broker: StreamsBroker) -> int:
    letters = dead_letters.every(broker)
    if not letters:
        print("no dead-lettered messages")
        return 0
    print("message_id                            actor              username        retries  dead_at  error")
    for letter in letters:
        print(
            f"{letter.message.message_id:<37} {letter.message.actor_name:<18} "
            f"{dead_letters.username_of(letter) or '?':<15} "
            f"{letter.message.options.get('retries', 0):>7}  {letter.dead_at.isoformat()}  {letter.error}"
        )
    return 0


def _chosen(broker: StreamsBroker, message_id: str | None) -> list[DeadLetter]:
    return [
        letter for letter in dead_letters.every(broker) if message_id in (None, letter.message.message_id)
    ]


async def _act(settings: Settings, broker: StreamsBroker, args: argparse.Namespace) -> int:
    message_id = None if getattr(args, "all", False) else args.message_id
    letters = _chosen(broker, message_id)
    if not letters:
        print(f"no dead-lettered message {message_id}" if message_id else "no dead-lettered messages")
        return 1 if message_id else 0
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        if args.dlq_command == "discard":
            for letter in letters:
                if await dead_letters.discard(engine, broker, letter, operator=operator()):
                    print(f"discarded {letter.message.message_id}")
            return 0
        outcome = await dead_letters.replay(engine, broker, letters, operator=operator())
    finally:
        await engine.dispose()
    for letter in outcome.done:
        print(f"replayed {letter.message.message_id} to {letter.queue}")
    return 0


def operator() -> str:
    """Who acts from a shell: ``cli:`` and the login name (recorded and logged with each act)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # a container user without a passwd entry
        return "cli"


def run(settings: Settings, args: argparse.Namespace) -> int:
    broker = create_broker(settings)
    try:
        if args.dlq_command == "list":
            return _list(broker)
        return asyncio.run(_act(settings, broker, args))
    finally:
        broker.close()
