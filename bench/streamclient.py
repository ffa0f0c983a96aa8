"""What the load generator's lean stream clients share: an asyncio Protocol that writes
one GET request on connect, keeps the response status, and says when it is closed.

A client may connect from a chosen loopback address (``source``): one address has about
28,000 ports (``ip_local_port_range``) to one server port, and Linux routes all of
127.0.0.0/8 to ``lo``, so 127.0.0.2 and up need no setup. The socket is bound with
``IP_BIND_ADDRESS_NO_PORT``: the port is chosen at connect, per destination, where
loopback TIME_WAIT ports are reused (``tcp_tw_reuse``), not at bind, where the previous
measure's 20,000 TIME_WAIT ports would be refused for a minute.
"""

from __future__ import annotations

import asyncio
import socket
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
    async def connect(cls: type[C], url: str, on_payload: Callable[[bytes], None], source: str = "") -> C:
        """Connect to ``url`` (an IPv4 address), from ``source`` if given."""
        parts = urlsplit(url)
        target = parts.path + ("?" + parts.query if parts.query else "")
        request = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n{cls.headers()}\r\n".encode("latin-1")
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if source:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((source, 0))
            await loop.sock_connect(sock, (parts.hostname or "127.0.0.1", parts.port or 80))
            _, client = await loop.create_connection(lambda: cls(request, on_payload), sock=sock)
        except BaseException:
            sock.close()
            raise
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
