"""A hand-rolled WebSocket client socket, to send frames and handshakes no well-behaved
library would (the hostile and conformance tests)."""

from __future__ import annotations

import socket


def handshake(server, token: str, extra: str = "", key: str = "dGhlIHNhbXBsZSBub25jZQ==") -> bytes:
    return (
        f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


class RawWebSocket:
    """A hand-rolled client socket, to send frames no well-behaved library would."""

    def __init__(self, server, token: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        self.sock.sendall(handshake(server, token))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        self.buffer = head.split(b"\r\n\r\n", 1)[1]

    def frame(
        self, opcode: int, payload: bytes, fin: bool = True, masked: bool = True, length: int | None = None
    ):
        n = len(payload) if length is None else length
        head = bytes([(0x80 if fin else 0) | opcode])
        mask_bit = 0x80 if masked else 0
        if n < 126:
            head += bytes([mask_bit | n])
        elif n < 65536:
            head += bytes([mask_bit | 126]) + n.to_bytes(2, "big")
        else:
            head += bytes([mask_bit | 127]) + n.to_bytes(8, "big")
        if masked:
            key = b"\x01\x02\x03\x04"
            payload = key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + payload)

    def close_code(self, timeout: float = 3.0) -> int | None:
        """Read server frames until a close frame; its status code (None if the socket just ended)."""
        frame = self.close_frame(timeout)
        if frame is None:
            return None
        return int.from_bytes(frame[:2], "big") if len(frame) >= 2 else 1005

    def close_frame(self, timeout: float = 3.0) -> bytes | None:
        """The payload of the server's close frame (None if the socket just ended)."""
        self.sock.settimeout(timeout)
        data = self.buffer
        while True:
            while len(data) >= 2:
                opcode, n, pos = data[0] & 0x0F, data[1] & 0x7F, 2
                if n == 126:
                    n, pos = int.from_bytes(data[2:4], "big"), 4
                elif n == 127:
                    n, pos = int.from_bytes(data[2:10], "big"), 10
                if len(data) < pos + n:
                    break
                payload, data = data[pos : pos + n], data[pos + n :]
                if opcode == 0x8:
                    return payload
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawWebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
