"""The mixed soak: steady POSTs, bulks and bursts for N minutes while the data grows.

    .venv/bin/python bench/soak.py [--minutes 30] [--clients 2000] [--rate 200]
                                   [--bulk-users 1000] [--bulk-every 5] [--burst-every 120]

Starts its own Redis and SecantusDB, one gunicorn instance of the service (2 gevent
workers, retention on: its sweeper runs every minute) and load processes on loopback
(``bench/load.py``): ``--clients`` streams, half SSE and half WebSocket, over 200 users;
single-user POSTs at ``--rate`` per second to those users (open loop); every
``--bulk-every`` seconds one bulk POST naming ``--bulk-users`` users (the 200 with streams
among them); every ``--burst-every`` seconds a 10 s burst from 32 keep-alive clients
(``bench/run.py``'s throughput measure, to users with no stream). At full size (30
minutes) that stores about 360,000 + 360,000 + 15 bursts of ~20,000 notifications: past
1,000,000. After every minute it records the delivery p99 of that minute's POSTs and
bulks, the 503s (and other errors) of every kind of POST, notifications lost, duplicated or
stray per client, and every worker's RSS and open files. Writes ``soak.md`` and
``soak.json`` to ``$NOTIFY_BENCH_OUT`` (default: the git-ignored .bench-results/); exits 1
if anything was lost or answered 503. Not part of CI: it runs for minutes and wants a
quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.measure import speed_probe_ms  # noqa: E402
from bench.report import results_dir  # noqa: E402
from bench.run import API_KEY, SECRET, LoadProc, Service, all_call, pcts_ms, split  # noqa: E402
from tools.devservers import mongo_server, redis_server  # noqa: E402

RESULTS = results_dir()
USERS = [f"soak{i}" for i in range(200)]
BURST_SECONDS = 10.0


def worker_stats(pid: int) -> tuple[float, int]:
    """(RSS in MB, open file descriptors) of one process."""
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def service_env(redis_url: str, mongo_url: str) -> dict[str, str]:
    return {
        "APP_ENV": "production",
        "SECRET_KEY": SECRET,
        "API_KEYS": API_KEY,
        "REDIS_URL": redis_url,
        "MONGO_URI": f"{mongo_url.rstrip('/')}/soak",
        "KEY_PREFIX": "soak:",
        "WEB_CONCURRENCY": "2",
        "LOG_LEVEL": "warning",
        "RATE_LIMIT_POSTS_PER_MINUTE": "0",
    }


class Soak:
    def __init__(self, args: argparse.Namespace, svc: Service, workdir: Path) -> None:
        self.args, self.svc = args, svc
        self.streams = [LoadProc(f"clients{i}", workdir) for i in range(4)]
        self.poster, self.bulker, self.burster = (
            LoadProc(n, workdir) for n in ("poster", "bulker", "burster")
        )
        self.bulk_users = USERS + [f"bulk{i}" for i in range(max(args.bulk_users - len(USERS), 0))]
        self.next_burst = args.burst_every / 2

    def procs(self) -> list[LoadProc]:
        return [*self.streams, self.poster, self.bulker, self.burster]

    def open(self) -> int:
        per_user = max(1, self.args.clients // (len(USERS) * 2))
        modes = ["ours-sse", "ours-sse", "ours-ws", "ours-ws"]
        groups = split(USERS, 2) * 2
        cmds = [
            {
                "cmd": "open",
                "mode": mode,
                "url": self.svc.url,
                "users": users,
                "per_user": per_user,
                "secret": SECRET,
                "timeout": 300,
            }
            for mode, users in zip(modes, groups, strict=True)
        ]
        return sum(r["opened"] for r in all_call(self.streams, cmds, timeout=400))

    def minute(self, n: int, started: float) -> dict[str, Any]:
        """One sample period: rate POSTs throughout, bulks on their ticks, a burst when due."""
        length, rate = self.args.minute_seconds, self.args.rate
        count = int(rate * length)
        self.poster.send(
            {
                "cmd": "post_rate",
                "url": self.svc.url,
                "users": USERS,
                "rate": rate,
                "count": count,
                "phase": f"m{n}",
                "key": API_KEY,
            }
        )
        begin, bulks, bulk_statuses, burst = time.monotonic(), [], {}, None
        while time.monotonic() - begin < length:
            elapsed = time.monotonic() - started
            if burst is None and elapsed >= self.next_burst:
                self.burster.send(
                    {
                        "cmd": "throughput",
                        "url": self.svc.url,
                        "key": API_KEY,
                        "users": [f"burst{i}" for i in range(200)],
                        "clients": 32,
                        "seconds": BURST_SECONDS,
                    }
                )
                burst, self.next_burst = {}, self.next_burst + self.args.burst_every
            k = len(bulks)
            reply = self.bulker.call(
                {
                    "cmd": "post_batch",
                    "url": self.svc.url,
                    "key": API_KEY,
                    "user_ids": self.bulk_users,
                    "phase": f"b{n}",
                    "k": k,
                },
                timeout=120,
            )
            bulks.append(k)
            for status in reply["statuses"]:
                bulk_statuses[str(status)] = bulk_statuses.get(str(status), 0) + 1
            time.sleep(max(0.0, begin + len(bulks) * self.args.bulk_every - time.monotonic()))
        posted = self.poster.recv(timeout=120)
        if burst is not None:
            burst = self.burster.recv(timeout=BURST_SECONDS + 90)
        time.sleep(1.0)  # the last deliveries of the period land
        singles = all_call(
            self.streams, [{"cmd": "report", "phase": f"m{n}", "n_posts": count, "users": USERS}] * 4
        )
        bulked = all_call(self.streams, [{"cmd": "report", "phase": f"b{n}", "markers": bulks}] * 4)
        all_call(self.streams, [{"cmd": "reset"}] * 4)
        latency = sorted(us for r in singles for us in r["latency_us"])
        bulk_latency = sorted(us for r in bulked for us in r["latency_us"])
        stats = [worker_stats(pid) for pid in self.svc.workers()]
        return {
            "minute": n + 1,
            "posts": count,
            "post_errors": posted["errors"],
            "bulks": len(bulks),
            "bulk_statuses": bulk_statuses,
            "burst": {"ok": burst["ok"], "errors": burst["errors"], "per_second": round(burst["per_second"])}
            if burst
            else None,
            "p99_ms": pcts_ms(latency)["p99_ms"],
            "bulk_p99_ms": pcts_ms(bulk_latency)["p99_ms"],
            "lost": sum(r["lost"] for r in singles + bulked),
            "duplicates": sum(r["duplicates"] for r in singles + bulked),
            "stray": sum(r["stray"] for r in singles),
            "closed_clients": sum(r["closed"] for r in singles),
            "accepted": count
            - sum(posted["errors"].values())
            + bulk_statuses.get("201", 0) * len(self.bulk_users)
            + (burst["ok"] if burst else 0),
            "worker_rss_mb": [round(rss, 1) for rss, _ in stats],
            "worker_fds": [fds for _, fds in stats],
        }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--clients", type=int, default=2000, help="stream clients, half SSE, half WS")
    parser.add_argument("--rate", type=float, default=200.0, help="single-user POSTs per second")
    parser.add_argument("--bulk-users", type=int, default=1000, help="users named by each bulk POST")
    parser.add_argument("--bulk-every", type=float, default=5.0, help="seconds between bulk POSTs")
    parser.add_argument("--burst-every", type=float, default=120.0, help="seconds between 10 s bursts")
    parser.add_argument("--minute-seconds", type=float, default=60.0, help="length of one sample period")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    redis, mongo = redis_server().start(), mongo_server().start()
    rows: list[dict[str, Any]] = []
    soak: Soak | None = None
    svc: Service | None = None
    started, probe = time.time(), speed_probe_ms()
    clients = 0
    try:
        svc = Service("ours", service_env(redis.url, mongo.url), workdir / "soak.log")
        soak = Soak(args, svc, workdir)
        clients = soak.open()
        print(f"[soak] {clients} clients open; {workdir}", flush=True)
        begin = time.monotonic()
        for n in range(args.minutes):
            rows.append(soak.minute(n, begin))
            print(f"[soak] {json.dumps(rows[-1])}", flush=True)
    finally:
        for proc in soak.procs() if soak else []:
            proc.stop()
        if svc is not None:
            svc.stop()
        redis.stop()
        mongo.stop()
    write(rows, args, clients, time.time() - started, argv, [probe, speed_probe_ms()])
    clean = all(
        r["lost"] == 0 and "HTTP 503" not in r["post_errors"] and "503" not in r["bulk_statuses"]
        for r in rows
    )
    return 0 if rows and clean else 1


def write(
    rows: list[dict[str, Any]],
    args: argparse.Namespace,
    clients: int,
    seconds: float,
    argv: list[str],
    probe: list[float],
) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = " ".join([".venv/bin/python bench/soak.py", *argv])
    stored = sum(r["accepted"] for r in rows)
    (RESULTS / "soak.json").write_text(
        json.dumps(
            {"command": command, "clients": clients, "speed_probe_ms": probe, "stored": stored, "rows": rows},
            indent=1,
        )
    )
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"`{command}` · {clients} stream clients · {args.rate:g} POST/s · a bulk of {args.bulk_users} "
        f"every {args.bulk_every:g} s · a {BURST_SECONDS:g} s burst every {args.burst_every:g} s · "
        f"{seconds / 60:.1f} min · {when} · speed probe {probe[0]:.0f} → {probe[1]:.0f} ms · "
        f"{stored:,} notifications accepted",
        "",
        "| minute | p99 ms | bulk p99 ms | POST errors | bulks (statuses) | burst ok / errors | lost | dup "
        "| stray | accepted | worker RSS MB | worker FDs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        burst = f"{r['burst']['ok']:,} / {r['burst']['errors']}" if r["burst"] else ""
        statuses = ", ".join(f"{status}: {n}" for status, n in sorted(r["bulk_statuses"].items()))
        lines.append(
            f"| {r['minute']} | {r['p99_ms']} | {r['bulk_p99_ms']} | {r['post_errors'] or 0} | {r['bulks']} "
            f"({statuses}) | {burst} | {r['lost']} | {r['duplicates']} | {r['stray']} | "
            f"{r['accepted']:,} | {' / '.join(map(str, r['worker_rss_mb']))} | "
            f"{' / '.join(map(str, r['worker_fds']))} |"
        )
    (RESULTS / "soak.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
