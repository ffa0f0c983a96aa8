"""What the service costs as its data grows: the same rows at 0, 100,000 and 1,000,000
stored notifications on the dev MongoDB-wire server (issue 25, part 3).

    .venv/bin/python bench/growth.py [--sizes 0,100000,1000000] [--quick]

For each size it builds, once, a SecantusDB data directory holding that many
notifications (``.devdata/growth/N``, 50,000 users, ~5,000 documents/s), copies it, and on
the copy measures:
- directly (one gunicorn, 2 workers): a history page (p50/p99 of 200 GETs), one bulk POST
  of 1,000 users (median of 5), and one delete / update / find by 100 and by 1,000 ids
  (``bench/secantus_delete_probe.py``'s calls);
- with ``bench/run.py --only ours --runs 1 --skip idle_sse,idle_ws`` on the same copy:
  fan-out latency (p50/p99), broadcast rate and POST throughput (32 clients).
Writes ``growth.json`` to ``$NOTIFY_BENCH_OUT`` (default ``.bench-results/``) and prints a
table. Dashboard pages and replay from a cursor are not measured here yet. Building the
1,000,000 size took 200 s here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import urllib.request
from argparse import Namespace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bson import ObjectId
from pymongo import MongoClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.store.models import Notification  # noqa: E402
from bench import run  # noqa: E402
from bench.secantus_delete_probe import timed  # noqa: E402
from tools.devservers import mongo_server, redis_server  # noqa: E402

DATA = ROOT / ".devdata" / "growth"
DB = "growth"
USERS = 50_000


def build(size: int) -> Path:
    """The data directory holding ``size`` notifications, built the first time."""
    base = DATA / str(size)
    if (base / "built").exists():
        return base
    shutil.rmtree(base, ignore_errors=True)
    server = mongo_server(data_dir=base).start()
    try:
        coll = MongoClient(server.url, directConnection=True)[DB].notifications
        for spec in Notification._meta["index_specs"]:  # the service's indexes, made before the data
            coll.create_index(spec["fields"], **{k: v for k, v in spec.items() if k != "fields"})
        now, seq, have = datetime.now(timezone.utc), time.time_ns() // 1000, 0
        while have < size:
            docs = []
            for i in range(min(1000, size - have)):
                seq += 1
                docs.append({"_id": ObjectId(), "user_id": f"user-{(have + i) % USERS}", "title": "t",
                             "message": "hello world " * 4, "category": "", "data": {}, "created_at": now,
                             "read": False, "seq": seq})  # fmt: skip
            coll.insert_many(docs, ordered=False)
            have += len(docs)
    finally:
        server.stop()
    (base / "built").write_text(f"{size}\n")
    return base


def get_ms(url: str, headers: dict[str, str], body: bytes | None = None) -> float:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body else "GET")
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as resp:
        resp.read()
    return (time.perf_counter() - started) * 1000


def direct(copy: Path) -> dict[str, Any]:
    """History page, one bulk POST, and calls by ids, on a service started on ``copy``."""
    redis, mongo = redis_server().start(), mongo_server(data_dir=copy).start()
    args = Namespace(quick=True, set=[], env=[], mongo_db=DB)
    bench = run.Bench.__new__(run.Bench)  # only its settings: no load generators
    bench.args, bench.p, bench.redis_url, bench.mongo_url = args, run.PROFILES["quick"], redis.url, mongo.url
    svc = run.Service("ours", bench.env("growth"), copy.parent / f"{copy.name}.log")
    out: dict[str, Any] = {}
    try:
        auth = {"Authorization": f"Bearer {run.API_KEY}", "Content-Type": "application/json"}
        page = sorted(get_ms(f"{svc.url}/api/users/user-{i % 100}/notifications", auth) for i in range(200))
        out["history_p50_ms"], out["history_p99_ms"] = page[100], page[198]
        users = json.dumps({"user_ids": [f"bulk-{i}" for i in range(1000)], "message": "m"}).encode()
        out["bulk_1000_ms"] = statistics.median(
            get_ms(f"{svc.url}/api/notifications", auth, users) for _ in range(5)
        )
        coll = MongoClient(mongo.url, directConnection=True)[DB].notifications
        for n in (100, 1000):
            docs = [{"_id": ObjectId(), "user_id": "~outbox", "read": False, "seq": 0} for _ in range(n)]
            coll.insert_many(docs)
            mine = {"_id": {"$in": [d["_id"] for d in docs]}, "user_id": "~outbox"}
            out[f"find_{n}_ids_ms"] = timed(lambda: list(coll.find(mine, {"_id": 1})))  # noqa: B023
            out[f"update_{n}_ids_ms"] = timed(lambda: coll.update_many(mine, {"$set": {"seq": 1}}))  # noqa: B023
            out[f"delete_{n}_ids_ms"] = timed(lambda: coll.delete_many(mine))  # noqa: B023
    finally:
        svc.stop()
        mongo.stop()
        redis.stop()
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/growth.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="0,100000,1000000")
    parser.add_argument("--quick", action="store_true", help="bench/run.py's small sizes (developing)")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    for size in (int(s) for s in args.sizes.split(",")):
        copy = DATA / f"run-{size}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(build(size), copy)
        row = direct(copy)
        out = run.RESULTS / f"growth-{size}"
        rows = ["--only", "ours", "--runs", "1", "--skip", "idle_sse,idle_ws", "--out", str(out)]
        run.main([*rows, "--mongo-data", str(copy), "--mongo-db", DB, *(["--quick"] if args.quick else [])])
        row["run"] = json.loads(out.with_suffix(".json").read_text())
        results[str(size)] = row
        shutil.rmtree(copy, ignore_errors=True)
        print(f"{size:>9,} stored: " + json.dumps({k: v for k, v in row.items() if k != "run"}), flush=True)
    target = run.RESULTS / "growth.json"
    target.write_text(json.dumps({"utc": time.strftime("%Y-%m-%d %H:%M"), "load": os.getloadavg(),
                                  "results": results}, indent=1))  # fmt: skip
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
