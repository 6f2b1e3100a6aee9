"""``signup worker`` runs its actors on uvloop, through the event loop policy it sets.

``use_uvloop`` (services/worker/main.py) sets uvloop's policy before the broker boots; Dramatiq's ``AsyncIO``
middleware then creates the loop every actor runs on with ``asyncio.new_event_loop()`` (dramatiq 2.2.1). If
this fails, either the worker no longer sets the policy or Dramatiq creates its loop some other way now,
and the worker silently fell back to asyncio's own loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
import uvloop
from dramatiq.asyncio import EventLoopThread

from services.worker.main import use_uvloop


@pytest.fixture
def policy_restored() -> Iterator[None]:
    before = asyncio.get_event_loop_policy()
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(before)


@pytest.mark.usefixtures("policy_restored")
def test_the_workers_actors_run_on_uvloop() -> None:
    use_uvloop()
    thread = EventLoopThread(logging.getLogger(__name__))
    try:
        assert isinstance(thread.loop, uvloop.Loop)
    finally:
        thread.loop.close()
