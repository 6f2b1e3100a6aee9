"""How a signup hands its "send the verification email" command on (DESIGN §5).

The signup use case calls ``Dispatcher.dispatch`` inside its transaction, before the commit. What the
dispatcher does there is the whole difference between the strategies:

- ``outbox``: insert an outbox row in the same transaction; the relay publishes it after the commit.
- ``fixed_delay`` / ``immediate``: the course's way, enqueue to Redis right now, before the commit.
- ``none``: nothing (a benchmark baseline for the API's own cost).
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from shared.messages import SEND_VERIFY_EMAIL_ACTOR, SEND_VERIFY_EMAIL_QUEUE, SendVerifyEmail
from shared.outbox import add_outbox_event
from shared.settings import Settings


class Dispatcher(Protocol):
    """Hands a new user's verification email on, inside the signup's transaction."""

    needs_redis: bool
    """Whether the API itself talks to Redis (``/readyz`` then checks it)."""

    async def dispatch(self, session: AsyncSession, *, username: str, trace_id: str | None) -> None: ...

    async def close(self) -> None: ...


class OutboxDispatcher:
    """Writes the command to the outbox table, in the signup's own transaction."""

    needs_redis = False

    async def dispatch(self, session: AsyncSession, *, username: str, trace_id: str | None) -> None:
        await add_outbox_event(
            session,
            actor=SEND_VERIFY_EMAIL_ACTOR,
            queue=SEND_VERIFY_EMAIL_QUEUE,
            payload=SendVerifyEmail(username=username),
            trace_id=trace_id,
        )

    async def close(self) -> None:
        return None


class NoDispatcher:
    """Sends nothing. Only for ``signup bench``'s baseline of what a signup costs without dispatch."""

    needs_redis = False

    async def dispatch(self, session: AsyncSession, *, username: str, trace_id: str | None) -> None:
        return None

    async def close(self) -> None:
        return None


def build_dispatcher(settings: Settings) -> Dispatcher:
    """The dispatcher ``DISPATCH_STRATEGY`` names."""
    if settings.dispatch_strategy == "outbox":
        return OutboxDispatcher()
    if settings.dispatch_strategy == "none":
        return NoDispatcher()
    raise NotImplementedError(
        f"DISPATCH_STRATEGY={settings.dispatch_strategy} is not available yet (the lab issue adds it)"
    )
