"""The worker runs its actors on uvloop through the event loop policy: the Dramatiq internal it relies on.

``signup worker`` sets uvloop's policy before its broker boots; Dramatiq's ``AsyncIO`` middleware then
creates the loop every actor runs on with ``asyncio.new_event_loop()`` (dramatiq 2.2.1). If this fails,
Dramatiq creates its loop some other way now and the worker silently fell back to asyncio's own loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
import uvloop
from dramatiq.asyncio import EventLoopThread


@pytest.fixture
def uvloop_policy() -> Iterator[None]:
    before = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(before)


@pytest.mark.usefixtures("uvloop_policy")
def test_dramatiqs_event_loop_thread_runs_uvloop_under_the_workers_policy() -> None:
    thread = EventLoopThread(logging.getLogger(__name__))
    try:
        assert isinstance(thread.loop, uvloop.Loop)
    finally:
        thread.loop.close()


def test_without_the_policy_it_would_be_asyncios_own_loop() -> None:
    thread = EventLoopThread(logging.getLogger(__name__))
    try:
        assert not isinstance(thread.loop, uvloop.Loop)
    finally:
        thread.loop.close()
