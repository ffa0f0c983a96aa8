"""The floor under a delivery's CPU: one ``send`` of one event on a loopback TCP socket.

    .venv/bin/python bench/sendfloor.py [--clients 10000] [--rounds 10] [--size 300]

Opens ``--clients`` loopback TCP connections to a reader process that drains them all
(epoll), then writes one ``--size``-byte message to every socket per round from plain
non-blocking sockets, as the flusher does (``app/delivery/waiting.py``), with no Python
work besides the call. Prints this process's user and system CPU per send: on loopback
the kernel also runs the receiving side's TCP path inside the sender's ``send``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import select
import socket
import time


def reader(port_q: multiprocessing.Queue, n: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4096)
    port_q.put(server.getsockname()[1])
    ep = select.epoll()
    conns = {}
    while len(conns) < n:
        conn, _ = server.accept()
        conn.setblocking(False)
        conns[conn.fileno()] = conn
        ep.register(conn.fileno(), select.EPOLLIN)
    while True:
        for fd, _ in ep.poll(1.0):
            try:
                if not conns[fd].recv(1 << 16):
                    return
            except BlockingIOError:
                pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--size", type=int, default=300)
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    port_q: multiprocessing.Queue = multiprocessing.Queue()
    proc = multiprocessing.Process(target=reader, args=(port_q, args.clients), daemon=True)
    proc.start()
    port = port_q.get(timeout=30)
    socks = []
    for _ in range(args.clients):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks.append(s)
    time.sleep(1.0)  # every connection accepted and registered
    payload = b"x" * args.size
    before = os.times()
    for _ in range(args.rounds):
        for s in socks:
            s.send(payload)
        time.sleep(0.05)  # the reader drains: no buffer fills
    after = os.times()
    sends = args.clients * args.rounds
    user = (after.user - before.user) / sends * 1e6
    system = (after.system - before.system) / sends * 1e6
    print(f"per send of {args.size} B to {args.clients} loopback sockets: user {user:.2f} us, "
          f"system {system:.2f} us, total {user + system:.2f} us ({sends} sends)")  # fmt: skip
    for s in socks:
        s.close()
    proc.join(10)


if __name__ == "__main__":
    main()
