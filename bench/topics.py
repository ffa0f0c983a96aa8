"""A notification published to a large topic: how long the fan-out takes and what it costs.

    .venv/bin/python bench/topics.py [--subscribers 100000] [--connected 2000] [--page-size 1000]

One instance (gunicorn, ``--workers`` workers) on its own Redis and SecantusDB. The topic
gets ``--subscribers`` users (``PUT /api/topics/<topic>/subscribers``, 1,000 a call);
``--connected`` of them, spread evenly over the user id order (the last connected user is
the topic's last subscriber), hold an SSE stream (bench/load.py). One warm-up bulk POST to
the connected users; then one ``POST /api/notifications`` with ``"topic"``, carrying the
sender's ``CLOCK_MONOTONIC`` like every other measure. Reported:

* time until the last connected user has it (its receipt minus the POST), and until the
  first; lost and duplicate deliveries, per client;
* the fan-out's own figures from ``GET /api/fanouts/<id>``: copies stored, and from its
  ``created_at`` to ``finished_at``: seconds, and deliveries per second (subscribers'
  copies stored and published, each into its user's inbox and, if connected, stream);
* each worker's RSS (VmRSS) before the POST and its peak while the fan-out runs (sampled
  every 0.1 s).

Writes ``topics-<time>.json`` to ``$NOTIFY_BENCH_OUT`` (default: the git-ignored
.bench-results/) and prints it; see bench/README.md, "Topics".
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.measure import ProcStats  # noqa: E402
from bench.run import API_KEY, SECRET, LoadProc, Service, all_call, say, split  # noqa: E402
from bench.standalone import run_standalone  # noqa: E402

TOPIC = "bench-topic"


def env(redis_url: str, mongo_url: str, tag: str, args: argparse.Namespace) -> dict[str, str]:
    return {
        "APP_ENV": "production",
        "SECRET_KEY": SECRET,
        "API_KEYS": API_KEY,
        "REDIS_URL": redis_url,
        "MONGO_URI": f"{mongo_url.rstrip('/')}/topics_{tag}",
        "KEY_PREFIX": f"f{tag}:",
        "WEB_CONCURRENCY": str(args.workers),
        "LOG_LEVEL": "warning",
        "RATE_LIMIT_POSTS_PER_MINUTE": "0",
        "RETENTION_DAYS": "0",  # the sweep scans SecantusDB's whole collection (bench/README.md)
        "FANOUT_PAGE_SIZE": str(args.page_size),
    }


def call(method: str, url: str, body: Any = None, timeout: float = 120) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.loads(resp.read())


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


class RssSampler:
    """Each worker's peak RSS while running (a thread reading /proc every ``every`` s)."""

    def __init__(self, service: Service, every: float = 0.1) -> None:
        self.service, self.every = service, every
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> dict[int, int]:
        return {pid: ProcStats.read(pid, self.service.port).rss_kb for pid in self.service.workers()}

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid, kb in self.rss().items():
                self.peak[pid] = max(self.peak.get(pid, 0), kb)
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class TopicBench:
    def __init__(self, args: argparse.Namespace, redis_url: str, mongo_url: str, workdir: Path) -> None:
        self.args = args
        tag = str(int(time.time()))
        self.service = Service("ours", env(redis_url, mongo_url, tag, args), workdir / f"topics-{tag}.log")
        self.loads = [LoadProc(f"topics-load{i}", workdir) for i in range(args.load_procs)]
        self.poster = LoadProc("topics-poster", workdir)
        self.users = [f"t{i:07d}" for i in range(args.subscribers)]
        step = max(1, args.subscribers // args.connected)
        self.connected = self.users[step - 1 :: step][: args.connected]

    def close(self) -> None:
        for proc in [*self.loads, self.poster]:
            proc.stop()
        self.service.stop()

    def subscribe(self) -> float:
        started = time.monotonic()
        url = f"{self.service.url}/api/topics/{TOPIC}/subscribers"
        for start in range(0, len(self.users), 1000):
            call("PUT", url, {"user_ids": self.users[start : start + 1000]})
        return round(time.monotonic() - started, 2)

    def marks(self, phase: str, expected: int, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            reps = all_call(self.loads, [{"cmd": "report", "phase": phase, "markers": [0]}] * len(self.loads))
            got = sum(m[0] for r in reps for m in r["markers"].values())
            if got >= expected or time.monotonic() > deadline:
                return reps
            time.sleep(0.2)

    def run(self) -> dict[str, Any]:
        a = self.args
        subscribe_s = self.subscribe()
        say(f"subscribed {len(self.users)} users in {subscribe_s} s")
        cmds = [
            {"cmd": "open", "mode": "ours-sse", "url": self.service.url, "users": group, "per_user": 1,
             "secret": SECRET, "timeout": 300}
            for group in split(self.connected, len(self.loads))
        ]  # fmt: skip
        opened = all_call(self.loads, cmds, timeout=400)
        say(f"opened {sum(r['opened'] for r in opened)} streams ({sum(r['failed'] for r in opened)} failed)")
        warm = {"cmd": "post_batch", "url": self.service.url, "key": API_KEY, "user_ids": self.connected,
                "phase": "w", "k": 0}  # fmt: skip
        self.poster.call(warm, timeout=120)
        self.marks("w", len(self.connected), 60)
        sampler = RssSampler(self.service)
        before = sampler.rss()
        body = {"topic": TOPIC, "message": "bench", "data": {"p": "f", "k": 0, "t": time.monotonic_ns()}}
        with sampler:
            fanout = call("POST", f"{self.service.url}/api/notifications", body)
            deadline = time.monotonic() + a.max_minutes * 60
            while fanout["state"] not in ("done", "failed") and time.monotonic() < deadline:
                time.sleep(0.5)
                try:
                    fanout = call("GET", f"{self.service.url}/api/fanouts/{fanout['id']}")
                except urllib.error.HTTPError as exc:  # the dev database busy with a page: ask again
                    if exc.code != 503:
                        raise
        reps = self.marks("f", len(self.connected), 60)
        marks = [m for r in reps for m in r["markers"].values()]
        got = sum(m[0] for m in marks)
        sent = min(m[1] for m in marks) if marks else 0
        first = min(m[2] for m in marks) if marks else 0
        last = max(m[3] for m in marks) if marks else 0
        seconds = (
            seconds_between(fanout["created_at"], fanout["finished_at"]) if fanout["finished_at"] else None
        )
        return {
            "subscribers": len(self.users),
            "connected": sum(r["opened"] for r in opened),
            "page_size": a.page_size,
            "workers": a.workers,
            "subscribe_seconds": subscribe_s,
            "fanout": fanout,
            "fanout_seconds": seconds,
            "deliveries_per_second": round(fanout["done"] / seconds) if seconds else None,
            "connected_received": got,
            "lost": sum(r["lost"] for r in reps),
            "duplicates": sum(r["duplicates"] for r in reps),
            "first_connected_s": round((first - sent) / 1e9, 3) if marks else None,
            "last_connected_s": round((last - sent) / 1e9, 3) if marks else None,
            "worker_rss_mb_before": sorted(round(kb / 1024, 1) for kb in before.values()),
            "worker_rss_mb_peak": sorted(round(kb / 1024, 1) for kb in sampler.peak.values()),
        }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--connected", type=int, default=2000)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--load-procs", type=int, default=2)
    parser.add_argument("--max-minutes", type=float, default=30)
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    return run_standalone(
        "topics", argv, args.note, lambda rds, mongo, workdir: TopicBench(args, rds, mongo, workdir)
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
