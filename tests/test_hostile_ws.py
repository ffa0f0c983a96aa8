"""Hostile WebSocket input against a live gunicorn: foreign origins and frames that no
well-behaved client sends (tests/test_stream.py already covers a plain oversized frame)."""

from __future__ import annotations

import time

import pytest
import websocket

from tests.support import WSClient
from tests.wsraw import RawWebSocket


def test_cross_origin_websocket_refused_by_default(live):
    server = live()  # no ALLOWED_ORIGINS: only the app's own origin
    token = server.token("origin-default")
    same = WSClient(server.url, token, origin=server.url)
    same.close()
    for origin in ("https://evil.example", "null", server.url.replace("127.0.0.1", "localhost")):
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            WSClient(server.url, token, origin=origin)
        assert info.value.status_code == 403


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
