"""``read_deadline`` on its own: the body's deadline, and the head deadline stopped and started again."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.api.slow_clients import CONNECTION_STATE, BodyTimeout, HeadDeadline, read_deadline
from tests.support import wait_for


class FakeTransport:
    def __init__(self) -> None:
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def scope(head: HeadDeadline | None = None) -> dict[str, Any]:
    return {"type": "http", "state": {} if head is None else {CONNECTION_STATE: head}}


async def test_a_body_that_does_not_arrive_in_time_raises_body_timeout() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()

    async def never() -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError

    with pytest.raises(BodyTimeout):
        await read_deadline(0.01)(app)(scope(), never, None)  # type: ignore[arg-type]


async def test_once_the_body_is_in_receive_waits_without_a_deadline() -> None:
    messages = [{"type": "http.request", "body": b"{}", "more_body": False}]
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await gone.wait()  # what an ASGI server does until the client leaves
        return {"type": "http.disconnect"}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["body"] == b"{}"
        waiting = asyncio.create_task(receive())
        await asyncio.sleep(0.05)  # past the body's deadline: still waiting, no BodyTimeout
        assert not waiting.done()
        gone.set()
        assert (await waiting)["type"] == "http.disconnect"

    await read_deadline(0.01)(app)(scope(), receive, None)  # type: ignore[arg-type]


async def test_the_head_deadline_stops_for_the_request_and_starts_again_after_its_answer() -> None:
    transport = FakeTransport()
    head = HeadDeadline(0.01)
    head.transport = transport  # type: ignore[assignment]
    head.start()
    sent: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0.05)  # a request longer than the head's deadline: the connection stays
        assert not transport.closed
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    await read_deadline(1)(app)(scope(head), None, send)  # type: ignore[arg-type]
    assert sent == ["http.response.start", "http.response.body"]

    async def closed() -> bool:  # no next head: the deadline runs again and closes the connection
        return transport.closed

    await wait_for(closed, timeout=5, what="the head deadline to close the connection")
