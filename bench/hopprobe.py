"""What each hop of one notification's path costs on this machine, busy and idle.

    .venv/bin/python bench/hopprobe.py [--calls 400]

Why: the delivery-latency measure sends 200 POSTs/s, so between two notifications the
machine is mostly idle, and every hop between processes (load generator, worker,
SecantusDB, Redis, worker, client) then wakes a process on an idle virtual CPU. This
times, in one process against its own Redis and SecantusDB (``tools/devservers.py``), the
steps a single notification waits for, called back to back and then paced 5 ms apart as
in that measure:
- a TCP echo to another process (the hop alone: no server work);
- Redis ``PING`` over a bare socket and through redis-py, and the service's publish script
  for one notification, called as the service calls it (``lua.LeanScript``);
- SecantusDB ``ping``; the document alone (``insert_one``, what the Node original stored);
  and the store step of one notification: ``insert_many`` of its outbox marker and the
  document, with the collection's one secondary index.
Prints p50 / p90 in ms. Nothing here is the service's code path except the script and the
documents' shape; it bounds what any implementation on these servers can reach.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import redis
from pymongo import MongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.store import lua  # noqa: E402
from app.store.models import outbox_marker  # noqa: E402
from app.store.serialization import new_document  # noqa: E402
from bench.measure import speed_probe_ms  # noqa: E402
from tools.devservers import mongo_server, redis_server  # noqa: E402

PACED_GAP = 0.005  # 200 notifications per second, as in the latency measure


def _echo(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := conn.recv(64):
        conn.sendall(data)


def timed(call: Callable[[], object], calls: int, gap: float) -> tuple[float, float]:
    """p50 and p90 of ``call`` in ms; ``gap`` seconds of idleness before each call."""
    samples = []
    for _ in range(calls):
        if gap:
            time.sleep(gap)
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.9)]


def steps(redis_url: str, mongo_url: str) -> tuple[dict[str, Callable[[], object]], Callable[[], None]]:
    listener = socket.create_server(("127.0.0.1", 0))
    echo_server = multiprocessing.Process(target=_echo, args=(listener,), daemon=True)
    echo_server.start()
    echo = socket.create_connection(listener.getsockname())
    echo.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    r = redis.Redis.from_url(redis_url)
    script = lua.LeanScript(r, lua.PUBLISH)
    body = orjson.dumps({"id": "x", "user_id": "u1", "title": "", "message": "probe", "data": {}})

    def publish() -> object:
        return script(["probe:", 50, 100, 600, 10_000_000, 1_000_000, "u1", "", body])

    client: MongoClient = MongoClient(mongo_url, directConnection=True)
    coll = client.hopprobe.notifications
    coll.create_index([("user_id", 1), ("read", 1), ("seq", 1)])

    def document() -> dict[str, Any]:
        doc = new_document("u1", "probe", "", "", {}, datetime.now(timezone.utc))
        doc["seq"] = time.time_ns() // 1000
        return doc

    def store() -> object:
        doc = document()
        return coll.insert_many([outbox_marker([doc["_id"]], doc["seq"]), doc], ordered=True)

    def echo_round_trip() -> object:
        echo.sendall(b"x")
        return echo.recv(64)

    host, port = r.connection_pool.connection_kwargs["host"], r.connection_pool.connection_kwargs["port"]
    bare = socket.create_connection((host, port))
    bare.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def bare_ping() -> object:
        bare.sendall(b"PING\r\n")
        return bare.recv(64)

    def close() -> None:
        echo.close()
        bare.close()
        echo_server.join(5)
        client.close()
        r.close()

    return {
        "TCP echo to another process": echo_round_trip,
        "Redis PING, bare socket": bare_ping,
        "Redis PING, redis-py": r.ping,
        "Redis: the publish script, one notification": publish,
        "SecantusDB ping": lambda: client.admin.command("ping"),
        "SecantusDB: the document alone (insert_one)": lambda: coll.insert_one(document()),
        "SecantusDB: store one notification (marker + document)": store,
    }, close


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    print(f"speed probe (bench/measure.py, lower is faster): {speed_probe_ms()} ms")
    with redis_server() as rs, mongo_server() as ms:
        probes, close = steps(rs.url, ms.url)
        try:
            for call in probes.values():  # connections made, scripts loaded, caches warm
                timed(call, 20, 0)
            print("| step | back to back p50 / p90 (ms) | 5 ms apart p50 / p90 (ms) |")
            print("|---|---|---|")
            for name, call in probes.items():
                busy = timed(call, args.calls, 0)
                idle = timed(call, args.calls, PACED_GAP)
                print(f"| {name} | {busy[0]:.3f} / {busy[1]:.3f} | {idle[0]:.3f} / {idle[1]:.3f} |")
        finally:
            close()


if __name__ == "__main__":
    main()
