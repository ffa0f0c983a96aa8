"""Per-delivery CPU cost of the stream loop, in one process, without network clients.

    .venv/bin/python bench/fanout_micro.py [--clients 2000] [--events 20] [--transport sse|ws]

N detached streams (app/delivery/engine.py) write into socketpairs (the kernel buffers absorb the bytes); the
loop offers events to every subscription like the hub does and waits until all are
written. Prints microseconds per delivery (offer + wake + session.next + write).
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import gevent  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.access.tokens import Subscriber  # noqa: E402
from app.delivery import engine  # noqa: E402
from app.delivery.connection import Conn  # noqa: E402
from app.delivery.events import NOTIFICATION, Event  # noqa: E402
from app.delivery.hub import Subscription  # noqa: E402
from app.delivery.session import StreamSession  # noqa: E402
from app.delivery.sse import SseFraming  # noqa: E402
from app.delivery.websocket import WebSocketFraming  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--transport", choices=("sse", "ws"), default="sse")
    args = parser.parse_args()
    hub = SimpleNamespace(unsubscribe=lambda sub: sub.close("closed"), config=None, service=None)
    subs, peers = [], []
    for i in range(args.clients):
        a, b = socket.socketpair()
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        session = StreamSession(hub, Subscriber(f"u{i}", time.time() + 3600), None)
        session.sub = Subscription(f"u{i}", 1000)
        session.tracker = SimpleNamespace(delivered=lambda: None, closed=lambda reason: None)
        conn = Conn.__new__(Conn)
        conn.sock = monkey.get_original("socket", "socket")(fileno=a.detach())
        conn.sock.setblocking(False)
        conn.fd = conn.sock.fileno()
        if args.transport == "sse":
            framing = SseFraming(60.0)
        else:
            framing = WebSocketFraming(lambda message: None, 4096, 0.0, time.monotonic())
        gevent.spawn_raw(engine.run, conn, [b"HTTP/1.1 200 OK\r\n\r\n"], session, framing, [])
        subs.append(session.sub)
        peers.append(b)
    gevent.sleep(0.5)
    payload = b'{"id":"x","user_id":"u","title":"","message":"hello","category":"","data":{},"read":false}'
    started = time.perf_counter()
    for k in range(args.events):
        event = Event(NOTIFICATION, "u", 1000 + k, payload)
        for sub in subs:
            sub.offer(event)
        gevent.sleep(0)  # let the stream greenlets run, as the hub does between messages
        while any(s.queue for s in subs):
            gevent.sleep(0)
    elapsed = time.perf_counter() - started
    n = args.clients * args.events
    print(f"{n} deliveries in {elapsed * 1000:.0f} ms: {elapsed / n * 1e6:.1f} us each, {n / elapsed:,.0f}/s")
    for sub in subs:
        sub.close("closed")
    gevent.sleep(0.2)


if __name__ == "__main__":
    main()
