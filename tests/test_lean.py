"""The detached stream path (app/delivery/connection.py, websocket.py): its RFC 6455 reader, its
alarm wheel, and WebSocket liveness against a live gunicorn (the stream behaviour itself is
covered by test_stream.py, which runs over this path under gunicorn)."""

from __future__ import annotations

import socket
import time

import gevent
import gevent.socket
import pytest

from app.delivery import connection as lean
from app.delivery import waiting as lean_wait
from app.delivery import websocket as lean_ws
from app.delivery.events import NOTIFICATION, Event
from app.delivery.hub import Subscription


def client_frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def feed(reader: lean_ws._Reader, data: bytes) -> tuple[list[str | bytes], list[bytes]]:
    got: list[str | bytes] = []
    out: list[bytes] = []
    reader.feed(data, lambda m: got.append(m) or None, out)
    return got, out


def test_reader_reassembles_fragments_split_anywhere():
    reader = lean_ws._Reader(1000)
    data = client_frame(lean_ws.OP_TEXT, b'{"type":', fin=False) + client_frame(lean_ws.OP_CONT, b'"read"}')
    got: list[str | bytes] = []
    for i in range(len(data)):  # one byte at a time: every partial-header path
        got += feed(reader, data[i : i + 1])[0]
    assert got == ['{"type":"read"}']


def test_reader_answers_ping_and_records_pong():
    reader = lean_ws._Reader(1000)
    reader.pong = False
    _, out = feed(reader, client_frame(lean_ws.OP_PING, b"hi") + client_frame(lean_ws.OP_PONG, b""))
    assert out == [lean_ws._frame(lean_ws.OP_PONG, b"hi")]
    assert reader.pong


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (client_frame(lean_ws.OP_TEXT, b"x" * 2000), lean_ws.WS_TOO_BIG),
        (
            client_frame(lean_ws.OP_TEXT, b"x" * 600, fin=False) + client_frame(lean_ws.OP_CONT, b"x" * 600),
            lean_ws.WS_TOO_BIG,
        ),
        (bytes([0x81, 0x02]) + b"hi", lean_ws.WS_PROTOCOL),  # not masked
        (client_frame(lean_ws.OP_TEXT, b"\xff\xfe"), lean_ws.WS_BAD_DATA),
        (client_frame(lean_ws.OP_CONT, b"x"), lean_ws.WS_PROTOCOL),
        (client_frame(lean_ws.OP_PING, b"x" * 126), lean_ws.WS_PROTOCOL),
        (client_frame(0x3, b""), lean_ws.WS_PROTOCOL),
    ],
    ids=["too-big", "too-big-fragments", "unmasked", "bad-utf8", "orphan-continuation", "big-ping", "opcode"],
)
def test_reader_closes_with_rfc_codes(data, code):
    with pytest.raises(lean_ws._Closing) as info:
        feed(lean_ws._Reader(1000), data)
    assert info.value.code == code


def test_reader_echoes_client_close_code():
    with pytest.raises(lean_ws._Closing) as info:
        feed(lean_ws._Reader(1000), client_frame(lean_ws.OP_CLOSE, (1000).to_bytes(2, "big")))
    assert info.value.code == 1000


def test_alarm_wheel_wakes_once_not_before_due():
    sub = Subscription("u", 10)
    alarm = lean_wait.Alarm(sub)
    due = time.monotonic() + 0.3
    lean_wait.WHEEL.arm(alarm, due)
    lean_wait.WHEEL.arm(alarm, due + 5)  # a later due does not add a second entry
    assert sub.wakeup.wait(3)
    assert time.monotonic() >= due
    assert alarm.slot == 0


def raw_ws(server, token: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(
        f"GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head  # RFC 6455's own example key and accept
    assert b"sec-websocket-extensions" not in head.lower()  # no permessage-deflate
    return sock


def read_frames(sock: socket.socket, until_close: bool = True, limit: float = 10) -> list[tuple[int, bytes]]:
    frames, buf, deadline = [], b"", time.monotonic() + limit
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 2 and len(buf) >= 2 + (buf[1] & 0x7F):
            n = buf[1] & 0x7F
            frames.append((buf[0] & 0x0F, buf[2 : 2 + n]))
            buf = buf[2 + n :]
        if until_close and frames and frames[-1][0] == lean_ws.OP_CLOSE:
            break
    return frames


def test_ws_pings_and_closes_1008_without_pong(live):
    server = live(WS_PING_SECONDS="0.3")
    sock = raw_ws(server, server.token("noping"))
    try:
        frames = read_frames(sock)
        assert frames[0][0] == lean_ws.OP_PING
        assert frames[-1] == (lean_ws.OP_CLOSE, (1008).to_bytes(2, "big") + b"Ping/Pong timeout")
    finally:
        sock.close()


def test_ws_answering_pings_stays_open_and_gets_pong(live):
    server = live(WS_PING_SECONDS="0.3")
    sock = raw_ws(server, server.token("pong"))
    try:
        sock.sendall(client_frame(lean_ws.OP_PING, b"are you there"))
        sock.settimeout(0.2)
        seen, buf, deadline = [], b"", time.monotonic() + 1.5  # five ping intervals
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            assert chunk, f"closed after {seen}"
            buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + (buf[1] & 0x7F):
                n = buf[1] & 0x7F
                opcode, payload, buf = buf[0] & 0x0F, buf[2 : 2 + n], buf[2 + n :]
                seen.append(opcode)
                if opcode == lean_ws.OP_PING:
                    sock.sendall(client_frame(lean_ws.OP_PONG, payload))
        assert seen[0] == lean_ws.OP_PONG
        assert seen.count(lean_ws.OP_PING) >= 2 and lean_ws.OP_CLOSE not in seen
    finally:
        sock.close()


def test_sse_hang_up_is_noticed_before_the_next_heartbeat(live, stack):
    """The stream is released when the client hangs up, not 15 s later at its next heartbeat."""
    import redis

    server = live()  # default 15 s heartbeat
    token = server.token("hangup")
    socks = []
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(f"GET /stream?token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        socks.append(sock)
    client = redis.Redis.from_url(stack.redis_url)
    key = f"{stack.prefix}rl:streams:hangup"  # app/access/ratelimit.py: one lease per open stream
    assert client.zcard(key) == 3
    for sock in socks:
        sock.close()
    deadline = time.monotonic() + 3
    while client.zcard(key) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.zcard(key) == 0


def parked_stream(sndbuf: int, transport: str = "sse") -> tuple[Subscription, socket.socket]:
    """A lean stream over a socketpair, as the hand-off starts it; returns its subscription
    and the client's end."""
    from types import SimpleNamespace

    from gevent import monkey

    from app.access.tokens import Subscriber
    from app.delivery.views import StreamSession

    ours, client = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    hub = SimpleNamespace(unsubscribe=lambda sub: sub.close("closed"))
    session = StreamSession(hub, Subscriber("u", time.time() + 3600), None)  # type: ignore[arg-type]
    session.sub = Subscription("u", 100_000)
    session.tracker = SimpleNamespace(delivered=lambda: None, closed=lambda reason: None)  # type: ignore[assignment]
    conn = lean.Conn.__new__(lean.Conn)
    conn.sock = monkey.get_original("socket", "socket")(fileno=ours.detach())
    conn.sock.setblocking(False)
    conn.fd = conn.sock.fileno()
    if transport == "sse":
        gevent.spawn(lean._run_sse, conn, b"HTTP/1.1 200 OK\r\n\r\n", session, [], 60.0)
    else:
        config = SimpleNamespace(WS_MAX_MESSAGE_BYTES=4096, WS_PING_SECONDS=0)
        gevent.spawn(lean_ws._run_ws, conn, b"HTTP/1.1 101 x\r\n\r\n", session, [], lambda *a: None, config)
    wait_for(lambda: session.sub.parked is not None)
    return session.sub, client


def wait_for(predicate, timeout: float = 5.0) -> None:
    with gevent.Timeout(timeout):
        while not predicate():
            gevent.sleep(0.005)


def read_until(client: socket.socket, marker: bytes, timeout: float = 10.0) -> bytes:
    got = b""
    client.setblocking(False)
    with gevent.Timeout(timeout):
        while marker not in got:
            gevent.socket.wait_read(client.fileno())
            chunk = client.recv(1 << 16)
            if not chunk:
                break
            got += chunk
    return got


def test_the_flusher_writes_for_a_parked_stream_without_waking_it():
    sub, client = parked_stream(1 << 16)
    parked = sub.parked
    sub.offer(Event(NOTIFICATION, "u", 1, b'{"n":1}'))
    assert b'id: 1\nevent: notification\ndata: {"n":1}' in read_until(client, b'{"n":1}')
    assert sub.parked is parked and not sub.queue  # written by the flusher; the stream slept on
    sub.close("closed")
    assert read_until(client, b"0\r\n\r\n").endswith(b"0\r\n\r\n")  # a clean end of the chunked body


def test_a_burst_larger_than_the_socket_buffer_reaches_the_client_whole_and_in_order(monkeypatch):
    handed_back = []
    wake = lean_wait.Parked._wake
    monkeypatch.setattr(lean_wait.Parked, "_wake", lambda p: (handed_back.append(len(p.pending)), wake(p)))
    sub, client = parked_stream(4096)
    body = b'{"pad":"' + b"x" * 2000 + b'"}'
    for seq in range(1, 301):  # ~600 KB: the flusher fills the buffer, the stream sends the rest
        sub.offer(Event(NOTIFICATION, "u", seq, body))
    got = read_until(client, b"id: 300\n")
    sub.close("closed")
    got += read_until(client, b"0\r\n\r\n")
    ids = [int(line[4:]) for line in got.split(b"\n") if line.startswith(b"id: ")]
    assert ids == list(range(1, 301))
    assert got.count(body) == 300 and got.endswith(b"0\r\n\r\n")
    assert max(handed_back) > 0  # the flusher filled the socket and left the rest to the stream


def server_frames(data: bytes) -> list[bytes]:
    """The payloads of unmasked server frames, any length."""
    payloads, pos = [], 0
    while pos + 2 <= len(data):
        n, pos = data[pos + 1] & 0x7F, pos + 2
        if n >= 126:
            width = 2 if n == 126 else 8
            n, pos = int.from_bytes(data[pos : pos + width], "big"), pos + width
        payloads.append(data[pos : pos + n])
        pos += n
    return payloads


def test_a_websocket_burst_larger_than_the_socket_buffer_arrives_as_whole_frames_in_order():
    sub, client = parked_stream(4096, "ws")
    body = b'{"pad":"' + b"x" * 2000 + b'"}'
    for seq in range(1, 301):
        sub.offer(Event(NOTIFICATION, "u", seq, body))
    got = read_until(client, b'"id":300,"notification":' + body + b"}")
    texts = server_frames(got[got.index(b"\r\n\r\n") + 4 :])
    frame = b'{"type":"notification","id":%d,"notification":%s}'
    assert texts == [frame % (seq, body) for seq in range(1, 301)]
    sub.close("closed")
