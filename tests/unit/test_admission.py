"""Bounded admission, with the clock and the work faked: who works, who waits, who is refused and why."""

from __future__ import annotations

import asyncio
import math

import pytest

from services.api.admission import QUEUE_HEADROOM, Admission, Shed, Ticket


def admission(**overrides: float) -> Admission:
    options = {"concurrency": 1, "max_wait_s": 5.0, "deadline_s": 10.0, "max_waiting": 1, **overrides}
    return Admission(**options)  # type: ignore[arg-type]


async def hold(admission: Admission, release: asyncio.Event, gone: asyncio.Event | None = None) -> None:
    async with admission.slot(client_gone=gone or asyncio.Event()):
        await release.wait()


async def test_beyond_the_wait_queue_a_signup_is_refused_at_once() -> None:
    gate, release = admission(), asyncio.Event()
    working = asyncio.create_task(hold(gate, release))
    waiting = asyncio.create_task(hold(gate, release))
    await asyncio.sleep(0)  # both have arrived: one works, one waits
    # At once: the refusal comes in the first step of the coroutine, before it waits for anything.
    refused_now = hold(gate, release)
    with pytest.raises(Shed) as refused:
        refused_now.send(None)
    assert refused.value.reason == "queue_full" and refused.value.retry_after_s >= 1
    release.set()
    await asyncio.gather(working, waiting)  # the waiting one got its turn


async def test_a_signup_that_waited_too_long_is_refused_before_any_work() -> None:
    gate, release = admission(max_wait_s=0.05), asyncio.Event()
    working = asyncio.create_task(hold(gate, release))
    await asyncio.sleep(0)
    with pytest.raises(Shed) as refused:
        await hold(gate, release)
    assert refused.value.reason == "queue_timeout"
    release.set()
    await working
    await hold(gate, release)  # the slot came back: nothing leaked


async def test_a_waiting_signup_whose_client_left_gives_its_place_up() -> None:
    gate, release, gone = admission(), asyncio.Event(), asyncio.Event()
    working = asyncio.create_task(hold(gate, release))
    await asyncio.sleep(0)
    waiting = asyncio.create_task(hold(gate, release, gone))
    await asyncio.sleep(0)
    gone.set()
    with pytest.raises(Shed, match="client_gone"):
        await waiting
    release.set()
    await working


async def test_the_ticket_refuses_the_commit_past_the_deadline_or_without_a_client() -> None:
    gone = asyncio.Event()
    ticket = admission(deadline_s=0.01).ticket(client_gone=gone)
    async with ticket.hashing():
        ticket.check()
    await asyncio.sleep(0.02)
    with pytest.raises(Shed, match="deadline"):
        ticket.check()
    ticket = admission().ticket(client_gone=gone)
    gone.set()
    with pytest.raises(Shed, match="client_gone"):
        ticket.check()


async def test_the_wait_queue_follows_the_measured_pace() -> None:
    gate = admission(concurrency=2, max_wait_s=1.0, max_waiting=0)
    assert gate.max_waiting == 6  # two slots, half of one second, the first guess of 0.15 s a signup
    for _ in range(30):
        async with gate.slot(client_gone=asyncio.Event()):
            await asyncio.sleep(0.02)
    assert 0.02 <= gate.service_s < 0.15
    assert gate.max_waiting == math.floor(QUEUE_HEADROOM * 2 * 1.0 / gate.service_s) > 6
    assert admission(max_waiting=7).max_waiting == 7


async def test_a_place_taken_by_the_route_counts_until_its_signup_gets_a_slot() -> None:
    gate, release = admission(), asyncio.Event()
    working = asyncio.create_task(hold(gate, release))
    await asyncio.sleep(0)
    place = gate.enter()  # the one wait place, taken once the body is read
    with pytest.raises(Shed, match="queue_full"):
        gate.enter()
    ticket = gate.ticket(client_gone=asyncio.Event(), place=place)
    assert ticket.deadline == place.arrived + gate.deadline_s
    waiting = asyncio.create_task(hold_ticket(ticket, release))
    release.set()
    await asyncio.gather(working, waiting)
    place.leave()  # the route leaves it again when the request ends: nothing happens
    release = asyncio.Event()
    working = asyncio.create_task(hold(gate, release))
    await asyncio.sleep(0)
    gate.enter()  # every place was given back once and only once: exactly one is free
    with pytest.raises(Shed, match="queue_full"):
        gate.enter()
    release.set()
    await working


async def hold_ticket(ticket: Ticket, release: asyncio.Event) -> None:
    async with ticket.hashing():
        await release.wait()
