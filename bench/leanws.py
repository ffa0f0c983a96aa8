"""A lean WebSocket client for the load generator: an asyncio Protocol, no framework.

Like ``leansse.py``: aiohttp's per-message cost on 10,000 sockets took CPU from the
server under test. RFC 6455 as far as a receiving client needs it: the handshake,
unmasked server frames (fragments joined), pings answered, the close code kept.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import Callable

from streamclient import StreamClient

TEXT, CLOSE, PING, CONTINUATION = 0x1, 0x8, 0x9, 0x0


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (clients must mask), payloads under 64 KiB (control frames, receipts)."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    size = (
        bytes([0x80 | len(payload)])
        if len(payload) < 126
        else bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    )
    return bytes([0x80 | opcode]) + size + mask + body


class WSClient(StreamClient):
    def __init__(self, request: bytes, on_payload: Callable[[bytes], None]) -> None:
        super().__init__(request, on_payload)
        self.close_code: int | None = None
        self._buf = bytearray()
        self._fragments = bytearray()

    @property
    def ready(self) -> asyncio.Event:
        """Set once the stream can receive (here: the upgrade's response) or is closed."""
        return self.head_seen

    def on_text(self, message: bytes) -> None:
        """One whole text message; a protocol on top (``leansio.py``) reads it first."""
        self.on_payload(message)

    @classmethod
    def headers(cls) -> str:
        key = base64.b64encode(os.urandom(16)).decode()
        return (
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        )

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if self.status is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = int(buf[9:12])
            del buf[: end + 4]
            self.head_seen.set()
            if self.status != 101:
                self.close()
                return
        pos = 0
        while len(buf) - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            length, head = second & 0x7F, 2
            if length == 126:
                if len(buf) - pos < 4:
                    break
                (length,) = struct.unpack_from("!H", buf, pos + 2)
                head = 4
            elif length == 127:
                if len(buf) - pos < 10:
                    break
                (length,) = struct.unpack_from("!Q", buf, pos + 2)
                head = 10
            if len(buf) - pos < head + length:
                break
            payload = bytes(buf[pos + head : pos + head + length])
            pos += head + length
            self._frame(first & 0x80, first & 0x0F, payload)
        if pos:
            del buf[:pos]

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode in (TEXT, CONTINUATION):
            if fin and not self._fragments:
                self.on_text(payload)
            else:
                self._fragments += payload
                if fin:
                    self.on_text(bytes(self._fragments))
                    self._fragments.clear()
        elif opcode == PING and self.transport is not None:
            self.transport.write(masked_frame(0xA, payload))
        elif opcode == CLOSE:
            self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            if self.transport is not None:
                self.transport.write(masked_frame(CLOSE, payload[:2]))
            self.close()
