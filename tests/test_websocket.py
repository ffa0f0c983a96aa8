"""RFC 6455 rules at /ws (app/delivery/websocket.py, frames by wsproto), one test per rule,
against a live gunicorn: the handshake (§4.2.1), close frames (§5.5.1, §7.4), keep-alive
pings, and the Origin check. The other documented close codes are tested where their
cause is: 1008 slow consumer and 1001 shutdown in test_faults.py, 4401 in test_stream.py,
1009/1002/1007 for hostile frames in test_hostile_ws.py."""

from __future__ import annotations

import socket
import time

import pytest
import websocket

from tests.support import WSClient
from tests.wsraw import RawWebSocket, handshake


def exchange(server, data: bytes) -> bytes:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        sock.sendall(data)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply
    finally:
        sock.close()


@pytest.fixture
def server(live):
    return live(WS_PING_SECONDS="0")


@pytest.mark.parametrize(
    ("key", "why"),
    [("c2hvcnQ=", "base64 of 5 bytes"), ("not base64 at all!!!!!==", "not base64"), ("", "missing")],
)
def test_handshake_key_must_be_base64_of_16_bytes(server, key, why):
    reply = exchange(server, handshake(server, server.token("hs"), key=key))
    assert reply.startswith(b"HTTP/1.1 400"), (why, reply)
    assert b"application/json" in reply


def test_handshake_answers_rfc_6455s_own_example_accept(server):
    reply = exchange(server, handshake(server, server.token("hs")))
    assert reply.startswith(b"HTTP/1.1 101")
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in reply
    assert b"sec-websocket-extensions" not in reply.lower()  # no permessage-deflate


def test_handshake_with_another_version_gets_426_naming_13(server):
    data = handshake(server, server.token("hs")).replace(b"Version: 13", b"Version: 8")
    reply = exchange(server, data)
    assert reply.startswith(b"HTTP/1.1 426") and b"Sec-WebSocket-Version: 13" in reply


@pytest.mark.parametrize("header", [b"Upgrade: websocket\r\n", b"Connection: Upgrade\r\n"])
def test_handshake_without_upgrade_headers_is_a_json_400(server, header):
    reply = exchange(server, handshake(server, server.token("hs")).replace(header, b""))
    assert reply.startswith(b"HTTP/1.1 400") and b"application/json" in reply


def test_origin_is_checked_against_configuration_not_the_clients_host(server):
    token = server.token("origin-host")
    data = handshake(server, token, extra="Origin: http://evil.example\r\n")
    forged = data.replace(f"Host: 127.0.0.1:{server.port}".encode(), b"Host: evil.example")
    assert exchange(server, forged).startswith(b"HTTP/1.1 403")


def test_allowed_origins_and_public_url_are_both_trusted(live):
    server = live(ALLOWED_ORIGINS="https://app.example", PUBLIC_URL="https://notify.example")
    token = server.token("origins")
    for origin in ("https://app.example", "https://notify.example"):
        WSClient(server.url, token, origin=origin).close()
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        WSClient(server.url, token, origin=server.url)  # not configured: not trusted
    assert info.value.status_code == 403


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000])
def test_a_close_code_the_rfc_forbids_gets_1002(server, code):
    with RawWebSocket(server, server.token("close-bad")) as ws:
        ws.frame(0x8, code.to_bytes(2, "big") + b"bye")
        assert ws.close_code() == 1002


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1008, 1011, 3000, 4000, 4999])
def test_a_valid_close_code_is_echoed(server, code):
    with RawWebSocket(server, server.token("close-ok")) as ws:
        ws.frame(0x8, code.to_bytes(2, "big"))
        assert ws.close_code() == code


def test_an_empty_close_is_answered_with_an_empty_close(server):
    with RawWebSocket(server, server.token("close-empty")) as ws:
        ws.frame(0x8, b"")
        assert ws.close_frame() == b""


@pytest.mark.parametrize(
    ("payload", "code"),
    [(b"\x03", 1002), ((1000).to_bytes(2, "big") + b"\xff\xfe", 1007)],
    ids=["one-byte payload: 1002", "reason not UTF-8: 1007"],
)
def test_a_malformed_close_payload_is_refused(server, payload, code):
    with RawWebSocket(server, server.token("close-malformed")) as ws:
        ws.frame(0x8, payload)
        assert ws.close_code() == code


def test_ws_pings_and_closes_1008_without_pong(live):
    server = live(WS_PING_SECONDS="0.3")
    with RawWebSocket(server, server.token("noping")) as ws:
        assert ws.close_frame(timeout=10) == (1008).to_bytes(2, "big") + b"Ping/Pong timeout"


def test_ws_answering_pings_stays_open_and_gets_pong(live):
    server = live(WS_PING_SECONDS="0.3")
    with RawWebSocket(server, server.token("pong")) as ws:
        ws.frame(0x9, b"are you there")
        ws.sock.settimeout(0.2)
        seen, buf, deadline = [], ws.buffer, time.monotonic() + 1.5  # five ping intervals
        while time.monotonic() < deadline:
            try:
                chunk = ws.sock.recv(65536)
            except TimeoutError:
                continue
            assert chunk, f"closed after {seen}"
            buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + (buf[1] & 0x7F):
                n = buf[1] & 0x7F
                opcode, payload, buf = buf[0] & 0x0F, buf[2 : 2 + n], buf[2 + n :]
                seen.append((opcode, payload))
                if opcode == 0x9:
                    ws.frame(0xA, payload)
        assert seen[0] == (0xA, b"are you there")
        assert [op for op, _ in seen].count(0x9) >= 2 and 0x8 not in [op for op, _ in seen]
