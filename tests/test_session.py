"""The session engine (app/delivery/session.py): cursors are checked before anything is
taken, and whatever a failing open took is given back."""

from __future__ import annotations

import re
import socket
import time

import pytest
import redis
import requests

from app.access.tokens import Subscriber
from app.delivery import session as session_module
from app.delivery.replay import ReplayUnavailable
from app.delivery.session import StreamSession, parse_cursor
from app.errors import ApiError
from tests.support import SSEClient


@pytest.mark.parametrize("raw", ["²", "\u00b2", "12a", "-1", "1.5", "9223372036854775808", "1" * 20, "０"])
def test_a_malformed_cursor_is_a_400_naming_the_field(raw):
    with pytest.raises(ApiError) as info:
        parse_cursor(raw, "Last-Event-ID")
    assert info.value.status == 400 and info.value.field == "Last-Event-ID"


@pytest.mark.parametrize(("raw", "value"), [(None, None), ("", None), ("  ", None), (" 42 ", 42), ("0", 0),
                                            ("9223372036854775807", 2**63 - 1)])  # fmt: skip
def test_valid_cursors(raw, value):
    assert parse_cursor(raw, "last_event_id") == value


def test_an_open_that_fails_gives_back_its_subscription_and_slot(app, monkeypatch):
    hub = app.extensions["hub"]
    released = []

    class Slot:
        def release(self) -> None:
            released.append(True)

    def unavailable(*args, **kwargs):
        raise ReplayUnavailable("down")

    monkeypatch.setattr(session_module, "events_after", unavailable)
    before = hub.connection_count()
    with app.app_context():
        session = StreamSession(hub, Subscriber("fails", time.time() + 60), 5, "sse", Slot())
        with pytest.raises(ApiError) as info:
            session.open()
    assert info.value.status == 503
    assert hub.connection_count() == before and "fails" not in hub.users
    assert released == [True]
    session.close()  # the owner's close after a failed open does nothing more
    assert released == [True]


def open_gauges(url: str) -> dict[str, float]:
    text = requests.get(url + "/metrics", timeout=5).text
    return {
        m[0]: float(m[1])
        for m in re.findall(r'^notify_open_connections\{transport="(\w+)"\} (\S+)$', text, re.M)
    }


def raw_exchange(sock: socket.socket, request: bytes) -> bytes:
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_a_thousand_bad_opens_leave_every_count_where_it_was(live, stack):
    server = live()
    token = server.token("bad-opens")
    before = open_gauges(server.url)
    ws_head = (
        b"Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    fields = [b"Last-Event-ID", b"last_event_id", b"last_event_id", b"last_event_id", b"last_event_id"]
    requests_ = [
        b"GET /stream?token=%s HTTP/1.1\r\nHost: x\r\nLast-Event-ID: \xb2\r\n\r\n",
        b"GET /stream?token=%s&last_event_id=%%C2%%B2 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /stream?token=%s&last_event_id=9999999999999999999 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /ws?token=%s&last_event_id=%%C2%%B2 HTTP/1.1\r\n" + ws_head,
        b"GET /ws?token=%s&last_event_id=9999999999999999999 HTTP/1.1\r\n" + ws_head,
    ]
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        for n in range(1000):
            reply = raw_exchange(sock, requests_[n % len(requests_)] % token.encode())
            assert reply.startswith(b"HTTP/1.1 400"), reply[:300]
            assert b'"invalid_cursor"' in reply and b'"field":"%s"' % fields[n % len(fields)] in reply
    finally:
        sock.close()
    assert open_gauges(server.url) == before
    client = redis.Redis.from_url(stack.redis_url)
    assert client.zcard(f"{stack.prefix}rl:streams:bad-opens") == 0  # no stream slot held
    client = SSEClient(server.url, token)  # the user's next stream is the only one
    try:
        client.wait_for(lambda: open_gauges(server.url).get("sse", 0) == before.get("sse", 0) + 1)
        server.notify("bad-opens", "after")
        client.wait_count(1)
        assert client.messages() == ["after"]
    finally:
        client.close()
