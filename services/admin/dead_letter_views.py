"""The dead letters: a keyset-paged list, one letter, replay one or all, discard one (confirmed)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.params import PathParameter, QueryParameter
from litestar.response import Redirect

from services.admin.access import authorised, console_of, page, session_of
from shared import dead_letters
from shared.broker import ENTRY_ID, DeadLetter

EntryId = Annotated[str, PathParameter(max_length=45)]
Cursor = Annotated[str, QueryParameter(max_length=45)]


@get("/dead-letters")
async def dead_letters_page(request: Request[Any, Any, Any], after: Cursor = "-") -> Response[Any]:
    session_of(request)
    broker = console_of(request).broker
    after = after if ENTRY_ID.fullmatch(after) else "-"
    letters = await asyncio.to_thread(broker.dead_letters, after=after, count=dead_letters.PAGE)
    total = await asyncio.to_thread(broker.dead_count)
    return page(
        request,
        "dead_letters.html",
        title="Dead letters",
        letters=letters,
        usernames=[dead_letters.username_of(letter) for letter in letters],
        total=total,
        next_after=letters[-1].entry_id if len(letters) == dead_letters.PAGE else None,
    )


class Gone(Exception):
    """The dead letter asked for was replayed, discarded or purged already."""


async def _letter(request: Request[Any, Any, Any], entry_id: str) -> DeadLetter:
    letter = await asyncio.to_thread(console_of(request).broker.dead_letter, entry_id)
    if letter is None:
        raise Gone
    return letter


def gone(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    message = "That dead letter is gone: replayed, discarded or purged already."
    return page(request, "message.html", title="Gone", message=message, back="/dead-letters")


@get("/dead-letters/{entry_id:str}")
async def dead_letter_page(request: Request[Any, Any, Any], entry_id: EntryId) -> Response[Any]:
    session_of(request)
    letter = await _letter(request, entry_id)
    return page(
        request,
        "dead_letter.html",
        title=f"Dead letter {letter.message.actor_name}",
        letter=letter,
        username=dead_letters.username_of(letter),
    )


@post("/dead-letters/{entry_id:str}/replay")
async def replay_one(request: Request[Any, Any, Any], entry_id: EntryId) -> Response[Any]:
    session, _ = await authorised(request)
    letter = await _letter(request, entry_id)
    console = console_of(request)
    outcome = await dead_letters.replay(console.engine, console.broker, [letter], operator=session.operator)
    if not outcome.done:
        raise Gone
    username = dead_letters.username_of(letter)
    message = f"Replayed {letter.message.message_id} to {letter.queue}, with fresh retries."
    back = f"/signup?q={username}" if username else "/dead-letters"
    return page(request, "message.html", title="Replayed", message=message, back=back)


@get("/dead-letters/{entry_id:str}/discard")
async def discard_confirm(request: Request[Any, Any, Any], entry_id: EntryId) -> Response[Any]:
    session_of(request)
    letter = await _letter(request, entry_id)
    question = (
        f"Discard the dead letter {letter.message.message_id} ({letter.message.actor_name}) for good? "
        "Its message will never be delivered, and reconciliation will not publish it again."
    )
    return page(
        request,
        "confirm.html",
        title="Discard a dead letter",
        question=question,
        action=f"/dead-letters/{entry_id}/discard",
        button="Discard",
        back=f"/dead-letters/{entry_id}",
    )


@post("/dead-letters/{entry_id:str}/discard")
async def discard_one(request: Request[Any, Any, Any], entry_id: EntryId) -> Response[Any]:
    session, form = await authorised(request)
    letter = await _letter(request, entry_id)
    if form.get("confirm") != "yes":
        return Redirect(f"/dead-letters/{entry_id}/discard", status_code=303)
    console = console_of(request)
    if not await dead_letters.discard(console.engine, console.broker, letter, operator=session.operator):
        raise Gone
    message = f"Discarded {letter.message.message_id}."
    return page(request, "message.html", title="Discarded", message=message, back="/dead-letters")


@get("/dead-letters/replay-all")
async def replay_all_confirm(request: Request[Any, Any, Any]) -> Response[Any]:
    session_of(request)
    total = await asyncio.to_thread(console_of(request).broker.dead_count)
    return page(
        request,
        "confirm.html",
        title="Replay every dead letter",
        question=f"Requeue all {total} dead letters with fresh retries?",
        action="/dead-letters/replay-all",
        button="Replay all",
        back="/dead-letters",
    )


@post("/dead-letters/replay-all")
async def replay_all(request: Request[Any, Any, Any]) -> Response[Any]:
    session, form = await authorised(request)
    if form.get("confirm") != "yes":
        return Redirect("/dead-letters/replay-all", status_code=303)
    console = console_of(request)
    letters = await asyncio.to_thread(dead_letters.every, console.broker)
    outcome = await dead_letters.replay(console.engine, console.broker, letters, operator=session.operator)
    message = f"Replayed {len(outcome.done)} dead letters ({len(outcome.gone)} were gone already)."
    return page(request, "message.html", title="Replayed", message=message, back="/dead-letters")
