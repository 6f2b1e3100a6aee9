"""Acting on dead letters: what ``signup dlq`` and the operator console both call (one code path).

A replay clears the event's ``handled_at`` *before* it requeues, so that reconciliation watches over the
replay as over a first publish (DESIGN §13); a discard removes the dead letter and its locator and leaves the
row handled. Each act is written to ``dead_letter_actions`` with the operator's name, where a signup's
timeline shows it, and logged with the operator's name and the ids, nothing personal.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.broker import DeadLetter, StreamsBroker
from shared.database import dead_letter_actions, outbox
from shared.logging import get_logger
from shared.outbox import event_id_of

log = get_logger()

PAGE = 50


def username_of(letter: DeadLetter) -> str | None:
    """The user a dead letter's payload names, if it names one."""
    args = letter.message.args
    if args and isinstance(args[0], dict) and isinstance(args[0].get("username"), str):
        return str(args[0]["username"])
    return None


def every(broker: StreamsBroker) -> list[DeadLetter]:
    """Every dead letter, oldest first, read page by page."""
    letters: list[DeadLetter] = []
    while page := broker.dead_letters(after=letters[-1].entry_id if letters else "-"):
        letters += page
    return letters


@dataclass(frozen=True)
class Outcome:
    """What an act did: the dead letters it acted on, and those that were gone already."""

    done: list[DeadLetter]
    gone: list[DeadLetter]


async def replay(
    engine: AsyncEngine, broker: StreamsBroker, letters: list[DeadLetter], *, operator: str
) -> Outcome:
    """Requeue ``letters`` with fresh retries. A letter another operator replayed or discarded meanwhile is
    left alone (and its event's handled mark restored). Raises PostgreSQL's and Redis's errors."""
    # Reopened first, so that a replay handled at once is not un-handled afterwards; a replay that then
    # fails is still a dead letter, which reconciliation leaves alone.
    await _set_handled(engine, letters, handled=False)
    done: list[DeadLetter] = []
    gone: list[DeadLetter] = []
    for letter in letters:
        requeued = await asyncio.to_thread(broker.replay, letter)
        (done if requeued is not None else gone).append(letter)
    await _set_handled(engine, gone, handled=True)
    await _record(engine, done, action="replayed", operator=operator)
    return Outcome(done, gone)


async def discard(engine: AsyncEngine, broker: StreamsBroker, letter: DeadLetter, *, operator: str) -> bool:
    """Remove ``letter`` for good; False when it was gone already. Its event stays handled (it was marked
    when it died), so reconciliation never publishes it again. Raises PostgreSQL's and Redis's errors."""
    if not await asyncio.to_thread(broker.discard, letter):
        return False
    await _record(engine, [letter], action="discarded", operator=operator)
    return True


async def _set_handled(engine: AsyncEngine, letters: list[DeadLetter], *, handled: bool) -> None:
    event_ids = [e for e in (event_id_of(letter.message.message_id) for letter in letters) if e is not None]
    if not event_ids:
        return
    statement = outbox.update().where(outbox.c.event_id.in_(event_ids))
    if handled:
        statement = statement.where(outbox.c.handled_at.is_(None)).values(handled_at=sa.func.now())
    else:
        statement = statement.values(handled_at=None)
    async with engine.begin() as connection:
        await connection.execute(statement)


async def _record(engine: AsyncEngine, letters: list[DeadLetter], *, action: str, operator: str) -> None:
    if not letters:
        return
    rows = [
        {
            "message_id": letter.message.message_id,
            "action": action,
            "operator": operator,
            "error": letter.error,
        }
        for letter in letters
    ]
    async with engine.begin() as connection:
        await connection.execute(dead_letter_actions.insert(), rows)
    for letter in letters:
        log.info(
            f"dead letter {action}",
            operator=operator,
            message_id=letter.message.message_id,
            event_id=letter.message.message_id,
            actor=letter.message.actor_name,
            queue=letter.queue,
            request_id=letter.message.options.get("trace_id"),
        )
