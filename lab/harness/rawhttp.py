"""The cheapest HTTP/1.1 client that will do for a load generator: keep-alive connections on asyncio
streams, requests encoded ahead of time, nothing parsed from an answer but its status, ``Content-Length``
and ``Retry-After``. httpx costs a millisecond or more of CPU a request, which a generator flooding an API on
the same cores takes from the API it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class RawClient:
    """Sends pre-encoded requests over a pool of keep-alive connections, opened as needed."""

    def __init__(self, base_url: str, *, timeout_s: float) -> None:
        url = urlsplit(base_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.timeout_s = timeout_s
        self._idle: list[_Connection] = []
        self._open: set[asyncio.StreamWriter] = set()

    def post_request(self, path: str, body: bytes, content_type: str = "application/json") -> bytes:
        """The bytes of a ``POST`` of ``body`` to ``path`` (encode before the clock starts)."""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def send(self, request: bytes) -> tuple[int, str | None]:
        """(status, ``Retry-After``) of ``request``; status 0 when no answer came within the timeout."""
        try:
            async with asyncio.timeout(self.timeout_s):
                reused = bool(self._idle)
                connection = self._idle.pop() if reused else await self._connect()
                try:
                    return await self._exchange(connection, request)
                except asyncio.IncompleteReadError as exc:
                    # The server closed an idle keep-alive connection before it read the request: send it
                    # again on a new one, as every HTTP client does; any other failure is the answer.
                    if not (reused and not exc.partial):
                        raise
                    self._drop(connection)
                    return await self._exchange(await self._connect(), request)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            return 0, None

    async def _connect(self) -> _Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self._open.add(writer)
        return reader, writer

    async def _exchange(self, connection: _Connection, request: bytes) -> tuple[int, str | None]:
        reader, writer = connection
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length, retry_after, close = 0, None, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"retry-after":
                    retry_after = value.strip().decode()
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            await reader.readexactly(length)
        except BaseException:
            self._drop(connection)
            raise
        if close:
            self._drop(connection)
        else:
            self._idle.append(connection)
        return status, retry_after

    def _drop(self, connection: _Connection) -> None:
        writer = connection[1]
        self._open.discard(writer)
        writer.close()

    def close(self) -> None:
        """Close every connection."""
        for writer in self._open:
            with contextlib.suppress(Exception):
                writer.close()
        self._open.clear()
        self._idle.clear()
