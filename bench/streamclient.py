"""What the load generator's lean stream clients share: an asyncio Protocol that writes
one GET request on connect, keeps the response status, and says when it is closed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

C = TypeVar("C", bound="StreamClient")


class StreamClient(asyncio.Protocol):
    def __init__(self, request: bytes, on_payload: Callable[[bytes], None]) -> None:
        self.request = request
        self.on_payload = on_payload
        self.transport: asyncio.Transport | None = None
        self.status: int | None = None
        self.head_seen = asyncio.Event()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    def headers(cls) -> str:
        """Request header lines of this kind of stream, each ending in CRLF."""
        return ""

    @classmethod
    async def connect(cls: type[C], url: str, on_payload: Callable[[bytes], None]) -> C:
        parts = urlsplit(url)
        target = parts.path + ("?" + parts.query if parts.query else "")
        request = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n{cls.headers()}\r\n".encode("latin-1")
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(
            lambda: cls(request, on_payload), parts.hostname or "127.0.0.1", parts.port or 80
        )
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.head_seen.set()
        if not self.closed.done():
            self.closed.set_result(None)
