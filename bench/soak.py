"""A bounded soak: two instances, thousands of streams, steady POSTs, for N minutes.

    .venv/bin/python bench/soak.py --minutes 10 --clients 3000 --rate 25

Starts its own Redis and SecantusDB, two gunicorn instances of the service (2 gevent
workers each) and load processes on loopback: every user has SSE and WebSocket clients on
both instances. POSTs alternate between the instances minute by minute. After each minute
it records every worker's RSS and open file descriptors, the minute's delivery latency,
and lost / duplicated / stray deliveries per client. Writes ``bench/results/soak.md`` and
``soak.json``. Not part of CI: it runs for minutes and wants a quiet machine.
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

from bench.run import API_KEY, PY, SECRET, LoadProc, Service, all_call, pcts_ms  # noqa: E402
from tools.devservers import mongo_server, redis_server  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def worker_stats(pid: int) -> tuple[float, int]:
    """(RSS in MB, open file descriptors) of one process."""
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def start_service(tag: str, redis_url: str, mongo_url: str, workdir: Path) -> Service:
    env = {
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
    import subprocess

    code = "from app import create_app; from app.store.models import ensure_indexes\n"
    code += "app = create_app()\nwith app.app_context(): ensure_indexes()"
    subprocess.run([PY, "-c", code], cwd=ROOT, env={**os.environ, **env}, check=True, timeout=60)
    return Service("ours", env, workdir / f"soak-{tag}.log")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--clients", type=int, default=3000, help="stream clients in all")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--rate", type=float, default=25.0, help="POSTs per second")
    parser.add_argument("--minute-seconds", type=float, default=60.0, help="length of one sample period")
    args = parser.parse_args(argv)
    per_user = max(1, args.clients // (args.users * 4))  # 4 groups: SSE/WS x instance A/B
    users = [f"soak{i}" for i in range(args.users)]
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    redis, mongo = redis_server().start(), mongo_server().start()
    services: list[Service] = []
    loads: list[LoadProc] = []
    rows: list[dict[str, Any]] = []
    started = time.time()
    try:
        services = [start_service(t, redis.url, mongo.url, workdir) for t in ("a", "b")]
        loads = [LoadProc(f"clients{i}", workdir) for i in range(4)]
        poster = LoadProc("poster", workdir)
        groups = [(svc, mode) for svc in services for mode in ("ours-sse", "ours-ws")]
        opened = all_call(
            loads,
            [
                {
                    "cmd": "open",
                    "mode": mode,
                    "url": svc.url,
                    "users": users,
                    "per_user": per_user,
                    "secret": SECRET,
                    "timeout": 300,
                }
                for svc, mode in groups
            ],  # fmt: skip
        )
        clients = sum(o["opened"] for o in opened)
        print(f"[soak] {clients} clients open ({per_user} per user per group); {workdir}", flush=True)
        count = int(args.rate * args.minute_seconds)
        for minute in range(args.minutes):
            svc = services[minute % 2]
            phase = f"m{minute}"
            posted = poster.call(
                {"cmd": "post_rate", "url": svc.url, "users": users, "rate": args.rate, "count": count,
                 "phase": phase, "key": API_KEY},
                timeout=args.minute_seconds + 120,
            )  # fmt: skip
            time.sleep(1.0)  # let the last deliveries of the minute land
            reports = all_call(
                loads, [{"cmd": "report", "phase": phase, "n_posts": count, "users": users}] * 4
            )
            for load in loads:
                load.call({"cmd": "reset"})
            latency = sorted(us for r in reports for us in r["latency_us"])
            stats = [worker_stats(pid) for s in services for pid in s.workers()]
            row = {
                "minute": minute + 1,
                "posted_to": "A" if svc is services[0] else "B",
                "posts": count,
                "post_errors": sum(posted["errors"].values()),
                "deliveries": len(latency),
                "lost": sum(r["lost"] for r in reports),
                "duplicates": sum(r["duplicates"] for r in reports),
                "stray": sum(r["stray"] for r in reports),
                "closed_clients": sum(r["closed"] for r in reports),
                "latency_ms": pcts_ms(latency),
                "worker_rss_mb": [round(rss, 1) for rss, _ in stats],
                "worker_fds": [fds for _, fds in stats],
            }
            rows.append(row)
            print(f"[soak] {json.dumps(row)}", flush=True)
    finally:
        for proc in loads + ([poster] if "poster" in locals() else []):
            proc.stop()
        for svc in services:
            svc.stop()
        redis.stop()
        mongo.stop()
    write(rows, args, clients if rows else 0, time.time() - started, argv)
    return 0 if rows and all(r["lost"] == r["duplicates"] == r["stray"] == 0 for r in rows) else 1


def write(
    rows: list[dict[str, Any]], args: argparse.Namespace, clients: int, seconds: float, argv: list[str]
) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = "python3 bench/soak.py " + " ".join(argv) if argv else "python3 bench/soak.py"
    (RESULTS / "soak.json").write_text(
        json.dumps({"command": command, "clients": clients, "rows": rows}, indent=1)
    )
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"Command: `{command}` · {clients} stream clients (SSE and WS on 2 instances × 2 workers) · "
        f"{args.rate:g} POST/s · {seconds / 60:.1f} min · {when}",
        "",
        "| minute | POSTs to | deliveries | lost | dup | stray | p50 ms | p99 ms "
        "| worker RSS MB | worker FDs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat = r["latency_ms"]
        lines.append(
            f"| {r['minute']} | {r['posted_to']} | {r['deliveries']:,} | {r['lost']} | {r['duplicates']} | "
            f"{r['stray']} | {lat['p50_ms']} | {lat['p99_ms']} | "
            f"{' / '.join(map(str, r['worker_rss_mb']))} | {' / '.join(map(str, r['worker_fds']))} |"
        )
    (RESULTS / "soak.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
