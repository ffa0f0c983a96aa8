"""A lean Socket.IO 4 client for the load generator: ``leanws.py``'s WebSocket, and the
few Engine.IO v4 / Socket.IO v5 packets a receiving client needs.

Connects straight over WebSocket (``/socket.io/?EIO=4&transport=websocket``, no polling
first): the server's open packet ``0{...}`` is answered with ``40`` (join the main
namespace), ``40{"sid":...}`` sets ``joined``, pings ``2`` get pongs ``3``, and each
``42["notify", message]`` event hands its JSON array to ``on_payload``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from leanws import TEXT, WSClient, masked_frame

CONNECT = masked_frame(TEXT, b"40")
PONG = masked_frame(TEXT, b"3")


class SIOClient(WSClient):
    def __init__(self, request: bytes, on_payload: Callable[[bytes], None]) -> None:
        super().__init__(request, on_payload)
        self.joined = asyncio.Event()  # the namespace connect was acknowledged (or the socket closed)

    @property
    def ready(self) -> asyncio.Event:
        return self.joined

    def on_text(self, packet: bytes) -> None:
        kind = packet[:2]
        if kind == b"42":
            self.on_payload(packet[2:])
        elif packet == b"2" and self.transport is not None:
            self.transport.write(PONG)
        elif packet[:1] == b"0" and self.transport is not None:
            self.transport.write(CONNECT)
        elif kind == b"40":
            self.joined.set()
        elif kind in (b"41", b"44") or packet[:1] == b"1":  # disconnect, connect error, close
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.joined.set()
        super().connection_lost(exc)
