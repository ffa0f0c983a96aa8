"""The detached stream loop (app/delivery/engine.py) and how it waits (app/delivery/waiting.py):
the alarm wheel, the flusher that writes for parked streams, bursts larger than the socket
buffer, hang-ups (the delivery behaviour itself is covered by test_stream.py)."""

from __future__ import annotations

import socket
import time

import gevent
import gevent.socket

from app.delivery import engine, waiting
from app.delivery.connection import Conn
from app.delivery.events import NOTIFICATION, Event
from app.delivery.hub import Subscription
from app.delivery.sse import SseFraming
from app.delivery.websocket import WebSocketFraming


def test_alarm_wheel_wakes_once_not_before_due():
    sub = Subscription("u", 10)
    alarm = waiting.Alarm(sub)
    due = time.monotonic() + 0.3
    waiting.WHEEL.arm(alarm, due)
    waiting.WHEEL.arm(alarm, due + 5)  # a later due does not add a second entry
    assert sub.wakeup.wait(3)
    assert time.monotonic() >= due
    assert alarm.slot == 0


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
    """A detached stream over a socketpair, as the hand-off starts it; returns its subscription
    and the client's end."""
    from types import SimpleNamespace

    from gevent import monkey

    from app.access.tokens import Subscriber
    from app.delivery.session import StreamSession

    ours, client = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    hub = SimpleNamespace(unsubscribe=lambda sub: sub.close("closed"))
    session = StreamSession(hub, Subscriber("u", time.time() + 3600), None)  # type: ignore[arg-type]
    session.sub = Subscription("u", 100_000)
    session.tracker = SimpleNamespace(delivered=lambda: None, closed=lambda reason: None)  # type: ignore[assignment]
    conn = Conn.__new__(Conn)
    conn.sock = monkey.get_original("socket", "socket")(fileno=ours.detach())
    conn.sock.setblocking(False)
    conn.fd = conn.sock.fileno()
    if transport == "sse":
        gevent.spawn(engine.run, conn, [b"HTTP/1.1 200 OK\r\n\r\n"], session, SseFraming(60.0), [])
    else:
        framing = WebSocketFraming(lambda message: None, 4096, 0.0, time.monotonic())
        gevent.spawn(engine.run, conn, [b"HTTP/1.1 101 x\r\n\r\n"], session, framing, [])
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
    wake = waiting.Parked._wake
    monkeypatch.setattr(waiting.Parked, "_wake", lambda p: (handed_back.append(len(p.pending)), wake(p)))
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
