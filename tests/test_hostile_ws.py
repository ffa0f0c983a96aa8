"""Hostile WebSocket input against a live gunicorn: foreign origins and frames that no
well-behaved client sends (tests/test_stream.py already covers a plain oversized frame)."""

from __future__ import annotations

import socket
import time

import pytest
import websocket

from tests.support import WSClient


def test_cross_origin_websocket_refused_by_default(live):
    server = live()  # no ALLOWED_ORIGINS: only the app's own origin
    token = server.token("origin-default")
    same = WSClient(server.url, token, origin=server.url)
    same.close()
    for origin in ("https://evil.example", "null", server.url.replace("127.0.0.1", "localhost")):
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            WSClient(server.url, token, origin=origin)
        assert info.value.status_code == 403


class RawWebSocket:
    """A hand-rolled client socket, to send frames no well-behaved library would."""

    def __init__(self, server, token: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        self.sock.sendall(
            f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
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
                    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk

    def close(self) -> None:
        self.sock.close()


WS_ATTACKS = {
    "length header claims 1 TB": (1009, lambda ws: ws.frame(0x1, b"", length=1 << 40)),
    "fragments add up past the limit": (
        1009,
        lambda ws: [
            ws.frame(op, b"a" * 8000, fin=fin) for op, fin in ((0x1, False), (0x0, False), (0x0, True))
        ],
    ),
    "unmasked client frame": (1002, lambda ws: ws.frame(0x1, b'{"type":"read","all":true}', masked=False)),
    "invalid UTF-8 text": (1007, lambda ws: ws.frame(0x1, b"\xff\xfe\xfd")),
    "oversized control frame": (1002, lambda ws: ws.frame(0x9, b"p" * 126)),
    "continuation without a start": (1002, lambda ws: ws.frame(0x0, b"orphan")),
    "reserved opcode": (1002, lambda ws: ws.frame(0x3, b"x")),
}


def test_hostile_websocket_frames_are_closed_with_the_right_code(live):
    server = live()
    workers = server.worker_pids()
    token = server.token("frames-h")
    codes = {}
    for name, (_expected, attack) in WS_ATTACKS.items():
        ws = RawWebSocket(server, token)
        try:
            started = time.monotonic()
            attack(ws)
            codes[name] = (ws.close_code(), round(time.monotonic() - started, 2))
        finally:
            ws.close()
    assert {name: code for name, (code, _t) in codes.items()} == {
        n: c for n, (c, _a) in WS_ATTACKS.items()
    }, codes
    assert all(t < 1.0 for _code, t in codes.values()), codes
    assert server.worker_pids() == workers
    healthy = WSClient(server.url, token)
    try:
        server.notify("frames-h", "still fine")
        healthy.wait_count(1)
    finally:
        healthy.close()
