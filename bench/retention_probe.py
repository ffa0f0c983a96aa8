"""What one retention pass costs on SecantusDB with many notifications stored.

    .venv/bin/python bench/retention_probe.py [--stored 1000000] [--expired 10000]

Builds once (``.devdata/retention/N``, with ``bench/growth.py``'s build) a SecantusDB data
directory holding ``--stored`` notifications with the ``created`` index only (created now,
so none expires), starts the server on a copy, adds ``--expired`` notifications 31 days
old and more (0.1 s apart), and times, while a writer inserts 100 notifications every
0.2 s (its slowest insert is reported):
- the previous pass's find, a range on ``_id`` (``{_id: {$lt: cutoff}}``, sorted, limit
  5,000), which SecantusDB answers by reading every stored document;
- ``app.store.retention.prune`` (windows on ``created_at``, deletes of 100 ids), without
  its rests: the pass that removes the expired ones, then one with nothing left to remove;
  the count and the longest of each call it sent.
pymongo only, no service. Prints one JSON line.

    .venv/bin/python bench/retention_probe.py --insert-cost

instead times what the ``created`` index costs an insert: ``insert_many`` of 1,000 and of
4,000 notifications (four bulk POSTs of 1,000 users batched together) into an empty
collection with the service's indexes and without ``created``, alternating, 3 times each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from bson import ObjectId
from pymongo import MongoClient, monitoring
from pymongo.collection import Collection

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.store import retention  # noqa: E402
from app.store.models import CREATED_INDEX, Notification  # noqa: E402
from bench.growth import build  # noqa: E402
from bench.measure import speed_probe_ms  # noqa: E402
from tools.devservers import mongo_server  # noqa: E402

DATA = ROOT / ".devdata" / "retention"


def doc(user: str, when: datetime) -> dict[str, Any]:
    oid = ObjectId(int(when.timestamp()).to_bytes(4, "big") + os.urandom(8))
    return {"_id": oid, "user_id": user, "title": "t", "message": "hello world " * 4, "category": "",
            "data": {}, "created_at": when, "read": False, "seq": time.time_ns() // 1000}  # fmt: skip


class Calls(monitoring.CommandListener):
    """The count and the longest of each command a client sent (server round trip)."""

    def __init__(self) -> None:
        self.calls: dict[str, list[int]] = {}

    def started(self, event: Any) -> None:
        pass

    def succeeded(self, event: Any) -> None:
        seen = self.calls.setdefault(event.command_name, [0, 0])
        seen[0], seen[1] = seen[0] + 1, max(seen[1], event.duration_micros)

    failed = started

    def take(self) -> dict[str, str]:
        taken = {name: f"{n} calls, longest {us / 1000:.0f} ms" for name, (n, us) in self.calls.items()}
        self.calls.clear()
        return taken


class Writer(threading.Thread):
    """Inserts 100 notifications every 0.2 s on a client of its own; keeps the slowest insert."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.client: MongoClient = MongoClient(url, directConnection=True, socketTimeoutMS=600_000)
        self.slowest, self.done = 0.0, threading.Event()

    def run(self) -> None:
        coll = self.client.probe.notifications
        while not self.done.wait(0.2):
            started = time.perf_counter()
            coll.insert_many([doc("writer", datetime.now(timezone.utc)) for _ in range(100)])
            self.slowest = max(self.slowest, time.perf_counter() - started)


def during_writes(url: str, call: Callable[[], Any]) -> dict[str, Any]:
    writer = Writer(url)
    writer.start()
    started = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - started
    writer.done.set()
    writer.join()
    writer.client.close()
    return {"seconds": round(seconds, 2), "result": result, "slowest_insert_ms": round(writer.slowest * 1000)}


def insert_cost() -> dict[str, list[int]]:
    """ms per insert_many of 1,000 and 4,000, with and without the created index."""
    server = mongo_server().start()
    out: dict[str, list[int]] = {}
    try:
        db = MongoClient(server.url, directConnection=True).probe
        for round_no in range(6):
            with_created = round_no % 2 == 1
            coll = db[f"n{round_no}"]
            for spec in Notification._meta["index_specs"]:
                if with_created or spec["name"] != CREATED_INDEX:
                    coll.create_index(spec["fields"], **{k: v for k, v in spec.items() if k != "fields"})
            for n in (1000, 4000):
                docs = [doc(f"u{i}", datetime.now(timezone.utc)) for i in range(n)]
                started = time.perf_counter()
                coll.insert_many(docs)
                key = f"insert_{n}_{'with' if with_created else 'without'}_created_ms"
                out.setdefault(key, []).append(round((time.perf_counter() - started) * 1000))
    finally:
        server.stop()
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stored", type=int, default=1_000_000)
    parser.add_argument("--expired", type=int, default=10_000)
    parser.add_argument("--insert-cost", action="store_true", help="what the created index costs an insert")
    args = parser.parse_args(argv)
    if args.insert_cost:
        print(json.dumps({"speed_probe_ms": speed_probe_ms(), **insert_cost()}), flush=True)
        return 0
    out: dict[str, Any] = {"stored": args.stored, "expired": args.expired, "speed_probe_ms": speed_probe_ms()}
    copy = DATA / f"run-{args.stored}"
    shutil.rmtree(copy, ignore_errors=True)
    only_created = [spec for spec in Notification._meta["index_specs"] if spec["name"] == CREATED_INDEX]
    shutil.copytree(build(args.stored, DATA, "probe", only_created), copy)
    server = mongo_server(data_dir=copy).start()
    try:
        calls = Calls()
        client: MongoClient = MongoClient(
            server.url, directConnection=True, socketTimeoutMS=600_000, event_listeners=[calls]
        )
        coll: Collection = client.probe.notifications
        old = datetime.now(timezone.utc) - timedelta(days=31)
        for start in range(0, args.expired, 5000):
            n = min(5000, args.expired - start)
            coll.insert_many([doc("old", old - timedelta(seconds=(start + i) * 0.1)) for i in range(n)])
        by_id = {"_id": {"$lt": ObjectId.from_datetime(datetime.now(timezone.utc) - timedelta(days=30))}}
        first = coll.find(by_id, {"_id": 1}).sort("_id", 1).limit(retention.WINDOW_DOCS)
        out["id_range_find"] = during_writes(server.url, lambda: len(list(first)))
        calls.take()
        windows: list[float] = []
        for name in ("pass", "pass_nothing_left"):
            out[name] = during_writes(server.url, lambda: retention.prune(coll, 30, between=windows.append))
            out[name] |= {"windows": len(windows), "calls": calls.take()}
            windows.clear()
    finally:
        server.stop()
        shutil.rmtree(copy, ignore_errors=True)
    out["speed_probe_ms_end"] = speed_probe_ms()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
