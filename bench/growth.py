"""What the service costs as its data grows: the same rows at 0, 100,000 and 1,000,000
stored notifications on the dev MongoDB-wire server (issue 25, part 3).

    .venv/bin/python bench/growth.py [--sizes 0,100000,1000000] [--quick]

For each size it builds, once, a SecantusDB data directory holding that many
notifications (``.devdata/growth/N``, 50,000 users, the service's indexes), copies it, and
on the copy measures:
- directly (one gunicorn, 2 workers): a history page (p50/p99 of 200 GETs), one bulk POST
  of 1,000 users (median of 5), a replay from a cursor (an SSE connect with
  ``Last-Event-ID`` 50 and 250 events back, to the last replayed event; median of 5),
  each dashboard page signed in as staff (p50 and max of 20 GETs), and one delete /
  update / find by 100 and by 1,000 ids (``bench/secantus_delete_probe.py``'s calls);
- with ``bench/run.py --only ours --runs 1 --skip idle_sse,idle_ws`` on the same copy:
  fan-out latency (p50/p99), broadcast rate and POST throughput (32 clients);
- then, on a fresh service on the copy: 100 bulk POSTs of 1,000 users, 4 at a time (the
  target: all accepted within 60 s).
Writes ``growth.json`` to ``$NOTIFY_BENCH_OUT`` (default ``.bench-results/``) and prints a
table.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import statistics
import sys
import time
import urllib.request
from argparse import Namespace
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlencode, urlsplit

from bson import ObjectId
from pymongo import MongoClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.store.models import Notification  # noqa: E402
from bench import run  # noqa: E402
from bench.measure import speed_probe_ms  # noqa: E402
from bench.secantus_delete_probe import timed  # noqa: E402
from tools.devservers import mongo_server, redis_server  # noqa: E402

DATA = ROOT / ".devdata" / "growth"
DB = "growth"
USERS = 50_000
STAFF = ("bench-staff", "bench staff password 1")
AUTH = {"Authorization": f"Bearer {run.API_KEY}", "Content-Type": "application/json"}


def build(size: int, data: Path = DATA, db: str = DB, indexes: list[dict[str, Any]] | None = None) -> Path:
    """The data directory holding ``size`` notifications (in ``db``, with ``indexes``, by
    default the service's), built the first time."""
    base = data / str(size)
    if (base / "built").exists():
        return base
    shutil.rmtree(base, ignore_errors=True)
    server = mongo_server(data_dir=base).start()
    try:
        coll = MongoClient(server.url, directConnection=True)[db].notifications
        for spec in Notification._meta["index_specs"] if indexes is None else indexes:  # before the data
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


def get_ms(url: str, headers: dict[str, str]) -> float:
    request = urllib.request.Request(url, headers=headers)
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as resp:
        resp.read()
    return (time.perf_counter() - started) * 1000


def post_timed(url: str, body: bytes) -> tuple[int, float]:
    """(status, seconds) of one POST with the API key."""
    request = urllib.request.Request(url, data=body, headers=AUTH)
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            resp.read()
            return resp.status, time.perf_counter() - started
    except HTTPError as exc:
        return exc.code, time.perf_counter() - started


def tally(answers: list[tuple[int, float]]) -> dict[str, int]:
    statuses: dict[str, int] = {}
    for status, _ in answers:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return statuses


def post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=AUTH, method="POST")
    with urllib.request.urlopen(request, timeout=60) as resp:
        return json.loads(resp.read())


@contextlib.contextmanager
def service_on(copy: Path) -> Iterator[run.Service]:
    """Redis, SecantusDB on ``copy`` and one gunicorn (2 workers) with the benchmark's settings."""
    redis, mongo = redis_server().start(), mongo_server(data_dir=copy).start()
    args = Namespace(quick=True, set=[], env=[("ADMIN_USERNAME", STAFF[0]), ("ADMIN_PASSWORD", STAFF[1])],
                     mongo_db=DB)  # fmt: skip
    bench = run.Bench.__new__(run.Bench)  # only its settings: no load generators
    bench.args, bench.p, bench.redis_url, bench.mongo_url = args, run.PROFILES["quick"], redis.url, mongo.url
    svc = run.Service("ours", bench.env("growth"), copy.parent / f"{copy.name}.log")
    try:
        yield svc
    finally:
        svc.stop()
        mongo.stop()
        redis.stop()


def replay_ms(svc: run.Service, user: str, back: int, cursors: list[int]) -> float:
    """An SSE connect resuming ``back`` events before the newest: ms to the newest."""
    token = post_json(f"{svc.url}/api/tokens", {"user_id": user})["token"]
    conn = http.client.HTTPConnection(urlsplit(svc.url).netloc, timeout=30)
    started = time.perf_counter()
    conn.request("GET", f"/stream?token={token}", headers={"Last-Event-ID": str(cursors[-1 - back])})
    resp = conn.getresponse()
    wanted, seen = f"id: {cursors[-1]}".encode(), 0
    try:
        while (line := resp.fp.readline()) and line.rstrip() != wanted:
            seen += line.startswith(b"id: ")
        if seen + 1 != back:
            raise RuntimeError(f"replay of {back} events gave {seen + 1}")
        return (time.perf_counter() - started) * 1000
    finally:
        conn.close()


def staff_session(svc: run.Service) -> dict[str, str]:
    """Signed in as staff the way a browser is (the form's CSRF token, then the form)."""
    conn = http.client.HTTPConnection(urlsplit(svc.url).netloc, timeout=30)
    try:
        conn.request("GET", "/dashboard/login")
        resp = conn.getresponse()
        cookie = resp.getheader("Set-Cookie", "").split(";", 1)[0]
        found = re.search(r'name="csrf_token" value="([^"]+)"', resp.read().decode())
        if found is None:
            raise RuntimeError("no CSRF token on the login page")
        form = urlencode({"username": STAFF[0], "password": STAFF[1], "csrf_token": found[1]})
        headers = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
        conn.request("POST", "/dashboard/login", body=form, headers=headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 302:
            raise RuntimeError(f"staff login answered {resp.status}")
        return {"Cookie": resp.getheader("Set-Cookie", "").split(";", 1)[0]}
    finally:
        conn.close()


DASHBOARD_PAGES = {
    "overview": "/dashboard",
    "user": "/dashboard/users/user-1",
    "search": "/dashboard/search?q=user-12",
    "api_overview": "/dashboard/api/overview",
    "api_history": "/dashboard/api/users/user-1/history",
    "api_status": "/dashboard/api/users/user-1/status",
}


def direct(copy: Path) -> dict[str, Any]:
    """History page, one bulk POST, replay, dashboard pages and calls by ids, on ``copy``."""
    out: dict[str, Any] = {}
    with service_on(copy) as svc:
        page = sorted(get_ms(f"{svc.url}/api/users/user-{i % 100}/notifications", AUTH) for i in range(200))
        out["history_p50_ms"], out["history_p99_ms"] = page[100], page[198]
        users = json.dumps({"user_ids": [f"bulk-{i}" for i in range(1000)], "message": "m"}).encode()
        bulks = [post_timed(f"{svc.url}/api/notifications", users) for _ in range(5)]
        out["bulk_1000_ms"] = statistics.median(seconds * 1000 for _, seconds in bulks)
        out["bulk_1000_statuses"] = tally(bulks)
        cursors = [post_json(f"{svc.url}/api/notifications", {"user_id": "replay", "message": f"r{i}"})["seq"]
                   for i in range(300)]  # fmt: skip
        for back in (50, 250):  # the Redis list keeps 64 (REPLAY_BUFFER_SIZE): then MongoDB by seq
            out[f"replay_{back}_ms"] = statistics.median(
                replay_ms(svc, "replay", back, cursors) for _ in range(5)
            )
        cookie = staff_session(svc)
        for name, path in DASHBOARD_PAGES.items():
            took = sorted(get_ms(svc.url + path, cookie) for _ in range(20))
            out[f"dashboard_{name}_ms"] = [round(took[10], 1), round(took[-1], 1)]
        coll = MongoClient(svc.mongo_uri, directConnection=True).get_default_database().notifications
        for n in (100, 1000):
            docs = [{"_id": ObjectId(), "user_id": "~outbox", "read": False, "seq": 0} for _ in range(n)]
            coll.insert_many(docs)
            mine = {"_id": {"$in": [d["_id"] for d in docs]}, "user_id": "~outbox"}
            out[f"find_{n}_ids_ms"] = timed(lambda: list(coll.find(mine, {"_id": 1})))  # noqa: B023
            out[f"update_{n}_ids_ms"] = timed(lambda: coll.update_many(mine, {"$set": {"seq": 1}}))  # noqa: B023
            out[f"delete_{n}_ids_ms"] = timed(lambda: coll.delete_many(mine))  # noqa: B023
    return out


def bulk_burst(copy: Path, posts: int = 100, parallel: int = 4) -> dict[str, Any]:
    """``posts`` bulk POSTs of 1,000 users, ``parallel`` at a time: seconds until all answered."""
    with service_on(copy) as svc:
        body = json.dumps({"user_ids": [f"burst-{i}" for i in range(1000)], "message": "b"}).encode()
        started = time.perf_counter()
        with ThreadPoolExecutor(parallel) as pool:
            answers = list(pool.map(lambda _: post_timed(f"{svc.url}/api/notifications", body), range(posts)))
        seconds = time.perf_counter() - started
    slowest = max(t for _, t in answers)
    return {"bulk_100x1000_seconds": round(seconds, 1), "bulk_100x1000_statuses": tally(answers),
            "bulk_100x1000_slowest_ms": round(slowest * 1000)}  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/growth.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="0,100000,1000000")
    parser.add_argument("--quick", action="store_true", help="bench/run.py's small sizes (developing)")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    probe_ms = speed_probe_ms()
    for size in (int(s) for s in args.sizes.split(",")):
        copy = DATA / f"run-{size}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(build(size), copy)
        row = direct(copy)
        out = run.RESULTS / f"growth-{size}"
        rows = ["--only", "ours", "--runs", "1", "--skip", "idle_sse,idle_ws", "--out", str(out)]
        run.main([*rows, "--mongo-data", str(copy), "--mongo-db", DB, *(["--quick"] if args.quick else [])])
        row["run"] = json.loads(out.with_suffix(".json").read_text())
        row.update(bulk_burst(copy))  # last: it stores 100,000 more
        results[str(size)] = row
        shutil.rmtree(copy, ignore_errors=True)
        print(f"{size:>9,} stored: " + json.dumps({k: v for k, v in row.items() if k != "run"}), flush=True)
    target = run.RESULTS / "growth.json"
    target.write_text(json.dumps({"utc": time.strftime("%Y-%m-%d %H:%M"), "load": os.getloadavg(),
                                  "speed_probe_ms": [probe_ms, speed_probe_ms()], "results": results},
                                 indent=1))  # fmt: skip
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
