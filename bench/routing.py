"""What each worker receives from Redis: 4 instances x 1 worker, 2,000 SSE clients over them.

    .venv/bin/python bench/routing.py [--clients 2000] [--instances 4] [--posts 2000] [--rate 200]

One deployment (one Redis, one database, one key prefix) of ``--instances`` gunicorn
instances with one worker each; one SSE client per user, user ``r<i>`` on instance
``i % instances``; every POST goes to the first instance. Phases: single-user POSTs at
``--rate``/s for every user in turn (delivery latency), then ``--broadcasts`` bulk POSTs
naming every user (deliveries/s from the first POST sent to the last delivery). Before and
after, each instance's ``/metrics``: ``notify_hub_messages_received_total`` (what its
worker's hub read; absent before routing, when every worker read every message) against
``notify_notifications_published_total`` summed over the instances, and Redis's
``total_net_output_bytes`` (all it sent, to subscribers and command replies).

Writes ``routing-<time>.json`` to ``$NOTIFY_BENCH_OUT`` (default: the git-ignored
.bench-results/) and prints a summary; see bench/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from bench.run import API_KEY, SECRET, LoadProc, Service, all_call, pcts_ms, say, split  # noqa: E402
from bench.standalone import run_standalone  # noqa: E402

RECEIVED = "notify_hub_messages_received_total"
PUBLISHED = "notify_notifications_published_total"


METRICS_TOKEN = "routing-bench-metrics"


def metric(url: str, name: str) -> float | None:
    request = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        text = resp.read().decode()
    values = [s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]
    return sum(values) if values else None


def env(redis_url: str, mongo_url: str, tag: str) -> dict[str, str]:
    return {
        "APP_ENV": "production",
        "SECRET_KEY": SECRET,
        "API_KEYS": API_KEY,
        "REDIS_URL": redis_url,
        "MONGO_URI": f"{mongo_url.rstrip('/')}/routing_{tag}",
        "KEY_PREFIX": f"r{tag}:",
        "WEB_CONCURRENCY": "1",
        "LOG_LEVEL": "warning",
        "RATE_LIMIT_POSTS_PER_MINUTE": "0",
        "RETENTION_DAYS": "0",  # the sweep scans SecantusDB's whole collection (bench/README.md)
        "METRICS_TOKEN": METRICS_TOKEN,
    }


class Routing:
    def __init__(self, args: argparse.Namespace, redis_url: str, mongo_url: str, workdir: Path) -> None:
        self.args = args
        self.redis = redis.Redis.from_url(redis_url)
        tag = str(int(time.time()))
        self.services: list[Service] = []
        for i in range(args.instances):
            self.services.append(
                Service("ours", env(redis_url, mongo_url, tag), workdir / f"routing-{tag}-{i}.log")
            )
        self.loads = [LoadProc(f"routing-load{i}", workdir) for i in range(args.instances)]
        self.poster = LoadProc("routing-poster", workdir)
        self.users = [f"r{i}" for i in range(args.clients)]
        self.groups = split(self.users, args.instances)  # group i on instance i

    def close(self) -> None:
        for proc in [*self.loads, self.poster]:
            proc.stop()
        for svc in self.services:
            svc.stop()

    def snapshot(self) -> dict[str, Any]:
        return {
            "received": [metric(s.url, RECEIVED) for s in self.services],
            "published": sum(metric(s.url, PUBLISHED) or 0 for s in self.services),
            "redis_out_bytes": self.redis.info("stats")["total_net_output_bytes"],
        }

    def post_batch(self, phase: str, k: int) -> dict[str, Any]:
        cmd = {"cmd": "post_batch", "url": self.services[0].url, "key": API_KEY, "user_ids": self.users,
               "phase": phase, "k": k}  # fmt: skip
        return self.poster.call(cmd, timeout=120)

    def counted(self, phase: str) -> dict[str, int]:
        replies = all_call(self.loads, [{"cmd": "count", "phase": phase}] * len(self.loads), 60)
        return {k: sum(r[k] for r in replies) for k in ("clients", "live", "got")}

    def reports(self, cmd: dict[str, Any]) -> list[dict[str, Any]]:
        return all_call(self.loads, [cmd] * len(self.loads), 120)

    def run(self) -> dict[str, Any]:
        cmds = [
            {"cmd": "open", "mode": "ours-sse", "url": svc.url, "users": group, "per_user": 1,
             "secret": SECRET, "timeout": 300}
            for svc, group in zip(self.services, self.groups, strict=True)
        ]  # fmt: skip
        opened = all_call(self.loads, cmds, timeout=400)
        say(f"opened {sum(r['opened'] for r in opened)} streams ({sum(r['failed'] for r in opened)} failed)")
        for k in range(20):  # warm-up until every client has one: all subscribed
            self.post_batch("w", k)
            time.sleep(1.0)
            if (c := self.counted("w"))["got"] >= c["clients"]:
                break
        self.reports({"cmd": "reset"})
        time.sleep(1.0)
        before = self.snapshot()

        a = self.args
        posted = self.poster.call(
            {"cmd": "post_rate", "url": self.services[0].url, "key": API_KEY, "users": self.users,
             "rate": a.rate, "count": a.posts, "phase": "l"},
            timeout=a.posts / a.rate + 120,
        )  # fmt: skip
        self.wait_marks("l", a.posts)
        reps = self.reports({"cmd": "report", "phase": "l", "n_posts": a.posts, "users": self.users})
        samples = sorted(s for r in reps for s in r["latency_us"])
        latency = {
            "posts": a.posts,
            "rate": a.rate,
            "post_ms": posted["post_ms"],
            "received": len(samples),
            "lost": sum(r["lost"] for r in reps),
            "duplicates": sum(r["duplicates"] for r in reps),
            "stray": sum(r["stray"] for r in reps),
            **pcts_ms(samples),
        }
        say(f"latency: {latency}")

        broadcasts = []
        for k in range(a.broadcasts):
            t0 = time.monotonic_ns()
            post = self.post_batch("b", k)
            marks = self.wait_marks("b", len(self.users), [k])
            last = max(m[3] for m in marks)
            got = sum(m[0] for m in marks)
            broadcasts.append(
                {"delivered": got, "seconds": round((last - t0) / 1e9, 3), "post_s": post["seconds"]}
            )
            say(f"broadcast {k}: {broadcasts[-1]}")
        after = self.snapshot()
        published = after["published"] - before["published"]
        received = [
            None if b is None or e is None else e - b
            for b, e in zip(before["received"], after["received"], strict=True)
        ]
        return {
            "instances": a.instances,
            "clients": len(self.users),
            "opened": sum(r["opened"] for r in opened),
            "published": published,
            "received_per_worker": received,
            "share_per_worker": [None if r is None else round(r / published, 4) for r in received],
            "redis_out_bytes": after["redis_out_bytes"] - before["redis_out_bytes"],
            "redis_out_bytes_per_published": round(
                (after["redis_out_bytes"] - before["redis_out_bytes"]) / published
            ),
            "latency": latency,
            "broadcast": broadcasts,
            "broadcast_deliveries_per_second": round(
                sum(b["delivered"] for b in broadcasts) / sum(b["seconds"] for b in broadcasts)
            ),
        }

    def wait_marks(self, phase: str, expected: int, ks: list[int] | None = None) -> list[list[int]]:
        deadline = time.monotonic() + 60
        while True:
            reps = self.reports({"cmd": "report", "phase": phase})
            marks = [m for r in reps for key, m in r["markers"].items() if ks is None or int(key) in ks]
            if sum(m[0] for m in marks) >= expected or time.monotonic() > deadline:
                return marks
            time.sleep(0.2)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--broadcasts", type=int, default=3)
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    return run_standalone(
        "routing", argv, args.note, lambda rds, mongo, workdir: Routing(args, rds, mongo, workdir)
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
