"""The benchmark: this service, Flask-SSE and the original's Node.js stack, side by side,
on one machine, on loopback.

    python3 dev.py bench [--quick] [--runs N] [--only ours|peer|node] [--skip NAME,...]

Starts its own redis-server and SecantusDB (tools/devservers.py), the service (gunicorn,
gevent, 2 workers), the Flask-SSE peer (bench/peer_flask_sse/, gunicorn + gevent, same
Redis), the Node.js peer (bench/peer_node/, two node instances, installed by ``npm ci``),
and load generators in separate processes (bench/load.py). Every wait is bounded.
Writes latest.{md,json,png} to ``$NOTIFY_BENCH_OUT`` (default: the git-ignored .bench-results/),
never into git; see bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import secrets
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pymongo import MongoClient  # noqa: E402

from app.store.models import MARKERS  # noqa: E402
from bench.measure import ProcStats, cpu_seconds, redis_connections_by_pid, speed_probe_ms  # noqa: E402
from bench.report import results_dir, write_results  # noqa: E402
from tools.devservers import find_free_port, mongo_server, redis_server  # noqa: E402

PY = sys.executable
GUNICORN = str(Path(PY).parent / "gunicorn")
NODE_DIR = ROOT / "bench" / "peer_node"
RESULTS = results_dir()
API_KEY = "bench-" + secrets.token_urlsafe(12)
SECRET = secrets.token_urlsafe(24)

PROFILES: dict[str, dict[str, Any]] = {
    # what the issue asks for
    "full": {
        "lat_users": 200, "lat_per_user": 10, "lat_posts": 2000, "lat_rate": 200,
        "idle_users": 2300, "idle_per_user": 10, "idle_steps": 4, "idle_hold": 20.0,
        "peer_idle_users": 600, "peer_idle_per_user": 10,
        "node_idle_users": 1000, "node_idle_per_user": 10,  # one instance holds them: 20,000 fds
        "bc_users": 1000, "bc_per_user": 10, "bc_repeats": 5,
        "tp_clients": 32, "tp_seconds": 10.0,
        "load_procs": 4, "heartbeat": 15,
        "source_addrs": 0,  # 0: 127.0.0.1 up to ONE_ADDRESS connections, else 127.0.0.2.. (source_addresses)
    },
    # small and fast, for developing the harness on a shared machine
    "quick": {
        "lat_users": 20, "lat_per_user": 10, "lat_posts": 200, "lat_rate": 100,
        "idle_users": 40, "idle_per_user": 10, "idle_steps": 2, "idle_hold": 3.0,
        "peer_idle_users": 20, "peer_idle_per_user": 10,
        "node_idle_users": 20, "node_idle_per_user": 10,
        "bc_users": 50, "bc_per_user": 4, "bc_repeats": 3,
        "tp_clients": 32, "tp_seconds": 3.0,
        "load_procs": 2, "heartbeat": 2,
        "source_addrs": 0,
    },
}  # fmt: skip


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- load generator processes ------------------------------------------------------------


class LoadProc:
    """A bench/load.py child: one JSON command in, one JSON reply out."""

    def __init__(self, name: str, log_dir: Path | None = None) -> None:
        self.name = name
        log = open(log_dir / f"{name}.log", "ab") if log_dir else None  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [PY, str(ROOT / "bench" / "load.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,  # aiohttp's warnings about cancelled streams are noise here
            cwd=ROOT,
            start_new_session=True,
        )
        if log is not None:
            log.close()
        self._buf = b""

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.proc.stdin.flush()

    def recv(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not sel.select(0):
                    raise RuntimeError(f"load process {self.name}: no reply in {timeout:.0f}s")
                if sel.select(min(left, 1.0)):
                    chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
                    if not chunk:
                        raise RuntimeError(f"load process {self.name} exited")
                    self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"load process {self.name}: {reply['error']}")
        return reply

    def call(self, cmd: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
        self.send(cmd)
        return self.recv(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call({"cmd": "exit"}, timeout=20)
                self.proc.wait(10)
            except (RuntimeError, OSError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def all_call(procs: list[LoadProc], cmds: list[dict[str, Any]], timeout: float = 300) -> list[dict[str, Any]]:
    for proc, cmd in zip(procs, cmds, strict=False):
        proc.send(cmd)
    return [proc.recv(timeout) for proc in procs]


def split(items: list[str], n: int) -> list[list[str]]:
    return [items[i::n] for i in range(n)]


# The open-file limit is 20,000 per process: a load process holds at most this many streams.
LOAD_SOCKETS = 8000
# One source address has ~28,000 ports to one server port (ip_local_port_range 32768-60999).
ONE_ADDRESS = 25_000
PER_ADDRESS = 20_000


def load_procs_for(p: dict[str, Any]) -> int:
    """The profile's load processes, or more where a measure's clients would put more than
    ``LOAD_SOCKETS`` streams in one."""
    measures = ("lat", "idle", "bc", "peer_idle", "node_idle")
    biggest = max(p[f"{m}_users"] * p[f"{m}_per_user"] for m in measures)
    return max(p["load_procs"], math.ceil(biggest / LOAD_SOCKETS))


def source_addresses(connections: int, count: int = 0) -> list[str]:
    """Where the load generator connects from: the kernel's choice (127.0.0.1) up to
    ``ONE_ADDRESS`` connections, else one loopback address per ``PER_ADDRESS`` from
    127.0.0.2 up, leaving 127.0.0.1's ports to everything else on the machine; ``count``
    > 0 asks for that many (``--set source_addrs=N``). All of 127.0.0.0/8 is ``lo``."""
    if not count:
        if connections <= ONE_ADDRESS:
            return []
        count = math.ceil(connections / PER_ADDRESS)
    return [f"127.0.0.{2 + i}" for i in range(count)]


# --- servers under test --------------------------------------------------------------------


def await_ready(
    proc: subprocess.Popen[bytes], url: str, what: str, log_path: Path, more: Callable[[], bool]
) -> None:
    """Until ``url`` answers 200 and ``more()`` holds; 60 s at most, the process killed on failure."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited; see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200 and more():
                    return
        except OSError:
            pass
        time.sleep(0.2)
    stop_group(proc)  # not left running behind the error
    raise RuntimeError(f"{what} did not start in 60s; see {log_path}")


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT to the process group, SIGKILL after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


class Service:
    """A gunicorn instance (ours or the peer) on a free port, its workers' pids known."""

    def __init__(self, kind: str, env: dict[str, str], log_path: Path, tree: Path = ROOT) -> None:
        self.kind = kind
        self.mongo_uri = env.get("MONGO_URI", "")
        self.port = find_free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.post_url = self.url
        if kind == "ours":
            own = tree / ".venv" / "bin" / "gunicorn"  # an earlier checkout's own dependencies
            gunicorn = str(own) if tree != ROOT and own.exists() else GUNICORN
            argv, cwd = [gunicorn, "-c", "gunicorn.conf.py", "wsgi:app"], tree
        else:
            argv = [
                GUNICORN, "app:app", "--worker-class", "gevent", "--workers", "2",
                "--worker-connections", "20000", "--bind", f"127.0.0.1:{self.port}",
            ]  # fmt: skip
            cwd = ROOT / "bench" / "peer_flask_sse"
        env = {**os.environ, **env, "PORT": str(self.port), "HOST": "127.0.0.1"}
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
        probe = "/readyz" if kind == "ours" else "/healthz"  # ours: once its workers made the indexes
        n_workers = int(env.get("WEB_CONCURRENCY", "2"))
        try:
            await_ready(self.proc, self.url + probe, f"{kind} gunicorn", log_path,
                        lambda: len(self.workers()) == n_workers)  # fmt: skip
        except RuntimeError:
            self.log.close()
            raise

    def workers(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return sorted(int(p) for p in text.split())

    def stream_workers(self) -> list[int]:
        """The processes that hold the streams (their memory per connection is measured)."""
        return self.workers()

    def stop(self) -> None:
        stop_group(self.proc)
        self.log.close()


class NodeService:
    """The original's stack (bench/peer_node/): two node instances, its way to use two cores.

    Streams connect to instance A (``url``), POSTs go to instance B (``post_url``), so every
    delivery crosses Redis on both sides; the throughput measure alternates between them.
    """

    kind = "node"

    def __init__(self, env: dict[str, str], log_dir: Path, tag: str) -> None:
        self.mongo_uri = env["MONGO_URI"]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        while len(self.ports) < 2:
            if (port := find_free_port()) not in self.ports:
                self.ports.append(port)
        self.port, self.url, self.post_url = self.ports[0], *(f"http://127.0.0.1:{p}" for p in self.ports)
        try:
            for name, port in zip("ab", self.ports, strict=True):
                log_path = log_dir / f"node-{tag}-{name}.log"
                with open(log_path, "ab") as log:  # the child keeps its own descriptor
                    proc = subprocess.Popen(["node", "server.js"], cwd=NODE_DIR, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            env={**os.environ, **env, "PORT": str(port)})  # fmt: skip
                self.procs.append(proc)
                await_ready(proc, f"http://127.0.0.1:{port}/healthz", f"node {name}", log_path, lambda: True)
        except RuntimeError:
            self.stop()
            raise

    def workers(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def stream_workers(self) -> list[int]:
        return self.workers()[:1]

    def stop(self) -> None:
        for proc in self.procs:
            stop_group(proc)


def install_node_peer() -> str:
    """``npm ci`` into bench/peer_node/node_modules when missing or the lock changed.

    Returns "" once installed, else why the Node.js peer is skipped."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        return "node and npm are not on PATH"
    wanted = hashlib.sha256((NODE_DIR / "package-lock.json").read_bytes()).hexdigest()
    stamp = NODE_DIR / "node_modules" / ".notify-lock.sha256"
    if stamp.exists() and stamp.read_text().strip() == wanted:
        return ""
    say("installing bench/peer_node (npm ci) ...")
    try:
        argv = [npm, "ci", "--no-audit", "--no-fund"]  # its output beside ours, not in the table's stdout
        done = subprocess.run(argv, cwd=NODE_DIR, stdout=sys.stderr, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        return "npm ci took more than 10 minutes"
    if done.returncode != 0:
        return f"npm ci failed (exit {done.returncode}, see above)"
    stamp.write_text(wanted + "\n")
    return ""


# how each stream mode's service takes a POST (bench/load.py post_request)
TARGETS = {"ours-sse": "ours", "ours-ws": "ours", "peer-sse": "peer", "node-ws": "node"}
AnyService = Service | NodeService


# --- scenarios -------------------------------------------------------------------------------


class Bench:
    def __init__(
        self, args: argparse.Namespace, redis_url: str, mongo_url: str, workdir: Path, node: bool
    ) -> None:
        self.args = args
        self.node = node  # the Node.js peer is installed and runs
        self.p = {**PROFILES["quick" if args.quick else "full"], **dict(args.set)}
        self.redis_url = redis_url
        self.mongo_url = mongo_url
        self.workdir = workdir
        self.loads = [LoadProc(f"load{i}", workdir) for i in range(load_procs_for(self.p))]
        self.poster = LoadProc("poster", workdir)
        self.run_no = 0

    def close(self) -> None:
        for proc in [*self.loads, self.poster]:
            proc.stop()

    def env(self, tag: str) -> dict[str, str]:
        return {
            "APP_ENV": "production",
            "SECRET_KEY": SECRET,
            "API_KEYS": API_KEY,
            "REDIS_URL": self.redis_url,
            "MONGO_URI": f"{self.mongo_url.rstrip('/')}/{self.args.mongo_db or 'bench_' + tag}",
            "KEY_PREFIX": f"b{tag}:",
            "WEB_CONCURRENCY": "2",
            "HEARTBEAT_SECONDS": str(self.p["heartbeat"]),
            "LOG_LEVEL": "warning",
            # capacity is measured, not the per-key quota (6,000 POSTs/min by default)
            "RATE_LIMIT_POSTS_PER_MINUTE": "0",
            **dict(self.args.env),
        }

    def start(self, kind: str, tag: str) -> AnyService:
        if kind == "node":  # its own database, always: its collection is named like ours
            env = {"REDIS_URL": self.redis_url, "NODE_ENV": "production",
                   "MONGO_URI": f"{self.mongo_url.rstrip('/')}/bench_node{tag}"}  # fmt: skip
            return NodeService(env, self.workdir, tag)
        tree = Path(self.args.tree) if kind == "ours" and self.args.tree else ROOT
        return Service(kind, self.env(tag), self.workdir / f"{kind}-{tag}.log", tree)

    # -- helpers --------------------------------------------------------------------------
    def open(
        self, svc: AnyService, mode: str, users: list[str], per_user: int, total: int = 0
    ) -> dict[str, Any]:
        """``per_user`` streams per user over the load processes, from the source addresses
        for ``total`` connections (the measure's; default: these)."""
        groups = split(users, len(self.loads))
        sources = source_addresses(max(total, len(users) * per_user), self.p["source_addrs"])
        cmds = [
            {"cmd": "open", "mode": mode, "url": svc.url, "users": g, "per_user": per_user,
             "secret": SECRET, "timeout": 300, "ack": self.args.ack, "sources": sources}
            for g in groups
        ]  # fmt: skip
        replies = all_call(self.loads, cmds, timeout=400)
        return {k: sum(r[k] for r in replies) for k in ("opened", "failed")} | {
            "errors": sorted({e for r in replies for e in r["errors"]}),
            "seconds": max(r["seconds"] for r in replies),
            "sources": sources or ["127.0.0.1"],
        }

    def lag(self, reset: bool = False) -> dict[str, Any]:
        """The load generator's event-loop lag since the last reset (``bench/load.py``
        LagProbe): the worst process's p50/p99/max, the poster (it stamps send times) and
        those holding the streams (they stamp receipts) alike, and each one's p99."""
        procs = [*self.loads, self.poster]
        replies = all_call(procs, [{"cmd": "lag", "reset": reset}] * len(procs), 60)

        def worst(key: str) -> float | None:
            return max((r[key] for r in replies if r[key] is not None), default=None)

        return {
            "loadgen_lag_p50_ms": worst("p50_ms"),
            "loadgen_lag_p99_ms": worst("p99_ms"),
            "loadgen_lag_max_ms": worst("max_ms"),
            "loadgen_lag_p99_by_proc": {
                proc.name: r["p99_ms"] for proc, r in zip(procs, replies, strict=True)
            },
            "load_procs": len(self.loads),
        }

    def quiet_cores(self, svc: AnyService, seconds: float) -> float | None:
        """Cores the workers keep busy over ``seconds`` with the streams open and nothing
        posted (heartbeats, timers, lease refreshes); None when ``seconds`` is 0."""
        if seconds <= 0:
            return None
        cpu = cpu_seconds(svc.workers())
        time.sleep(seconds)
        return round((cpu_seconds(svc.workers()) - cpu) / seconds, 3)

    def load_pids(self) -> list[int]:
        return [proc.proc.pid for proc in [*self.loads, self.poster]]

    def count(self, phase: str) -> dict[str, int]:
        replies = all_call(self.loads, [{"cmd": "count", "phase": phase}] * len(self.loads), 60)
        return {k: sum(r[k] for r in replies) for k in ("clients", "live", "got")}

    def broadcast(self, svc: AnyService, users: list[str], phase: str, k: int, target: str) -> dict[str, Any]:
        return self.poster.call(
            {"cmd": "post_batch", "url": svc.post_url, "key": API_KEY, "user_ids": users, "phase": phase,
             "k": k, "target": target},
            timeout=120,
        )  # fmt: skip

    def barrier(self, svc: AnyService, users: list[str], target: str, timeout: float = 60) -> bool:
        """Broadcast until every client has received one: all are subscribed."""
        deadline, k = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            self.broadcast(svc, users, "w", k, target)
            k += 1
            wait_until = time.monotonic() + 3
            while time.monotonic() < wait_until:
                c = self.count("w")
                if c["got"] >= c["clients"]:
                    return True
                time.sleep(0.2)
        say(f"barrier: only {self.count('w')} clients got a warm-up event")
        return False

    def reports(self, cmd: dict[str, Any]) -> list[dict[str, Any]]:
        return all_call(self.loads, [cmd] * len(self.loads), 120)

    def close_all(self) -> None:
        all_call(self.loads, [{"cmd": "close"}] * len(self.loads), 120)

    # -- (a) latency ------------------------------------------------------------------------
    def latency(self, svc: AnyService, mode: str) -> dict[str, Any]:
        """``lat_posts`` single-user POSTs at ``lat_rate``/s to ``lat_users`` users with
        ``lat_per_user`` clients each: latency, the generator's loop lag, CPU per delivery
        (workers and generator) and worker RSS per connection (meaningful on a fresh
        service: bench/curve.py starts one per size)."""
        p, target = self.p, TARGETS[mode]
        users = [f"lat{i}" for i in range(p["lat_users"])]
        workers = svc.stream_workers()
        base = ProcStats.read_many(workers, svc.port)
        opened = self.open(svc, mode, users, p["lat_per_user"])
        self.barrier(svc, users, target)
        held = ProcStats.read_many(workers, svc.port)
        quiet = self.quiet_cores(svc, p.get("lat_quiet", 0))
        self.reports({"cmd": "reset"})
        expected = p["lat_posts"] * p["lat_per_user"]
        self.lag(reset=True)
        cpu, gen_cpu, started = cpu_seconds(svc.workers()), cpu_seconds(self.load_pids()), time.monotonic()
        posted = self.poster.call(
            {"cmd": "post_rate", "url": svc.post_url, "key": API_KEY, "users": users, "rate": p["lat_rate"],
             "count": p["lat_posts"], "phase": "l", "target": target},
            timeout=p["lat_posts"] / p["lat_rate"] + 120,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            got = sum(
                sum(m[0] for m in r["markers"].values())
                for r in self.reports({"cmd": "report", "phase": "l"})
            )
            if got >= expected:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        cpu, gen_cpu = cpu_seconds(svc.workers()) - cpu, cpu_seconds(self.load_pids()) - gen_cpu
        lag = self.lag()
        time.sleep(0.5)  # late duplicates would show up now
        reps = self.reports({"cmd": "report", "phase": "l", "n_posts": p["lat_posts"], "users": users})
        samples = sorted(s for r in reps for s in r["latency_us"])
        live = self.count("l")
        self.close_all()
        conns = sum(held[pid].sockets - base[pid].sockets for pid in workers)
        growth = sum(held[pid].rss_kb - base[pid].rss_kb for pid in workers)
        pcts = pcts_ms(samples)
        return {
            "clients": live["clients"],
            "failed": opened["failed"] + live["clients"] - live["live"],
            "posts": p["lat_posts"],
            "rate": p["lat_rate"],
            "post_errors": posted["errors"],
            "post_ms": posted["post_ms"],
            "expected": expected,
            "received": len(samples),
            "lost": sum(r["lost"] for r in reps),
            "duplicates": sum(r["duplicates"] for r in reps),
            "stray": sum(r["stray"] for r in reps),
            "acks": {
                k: sum(r["acks"][k] for r in reps if "acks" in r)
                for k in ("frames", "posts", "ids", "failed")
            },
            **pcts,
            **lag,
            # the figure measures the generator (bench/README.md, "The load generator's loop lag")
            "loadgen_bound": loadgen_bound(lag, pcts),
            "worker_cpu_us_per_delivery": round(cpu / max(len(samples), 1) * 1e6, 1),
            "worker_cpu_cores": round(cpu / elapsed, 3),  # cores busy while the POSTs ran
            "loadgen_cpu_us_per_delivery": round(gen_cpu / max(len(samples), 1) * 1e6, 1),
            "quiet_worker_cores": quiet,
            "connections": conns,
            "kb_per_connection": round(growth / conns, 2) if conns else None,
            "sources": opened["sources"],
            "hist_ms": [round(s / 1000, 3) for s in samples[:: max(1, len(samples) // 5000)]],
        }

    # -- (b, c, f) idle connections, memory, Redis connections ------------------------------
    def idle(self, svc: AnyService, mode: str, users_n: int, per_user: int) -> dict[str, Any]:
        peer, target = mode == "peer-sse", TARGETS[mode]
        users = [f"idle{i}" for i in range(users_n)]
        workers = svc.stream_workers()
        time.sleep(1.0)
        base = ProcStats.read_many(workers, svc.port)
        curve: list[list[float]] = [[0, sum(s.rss_kb for s in base.values()) / 1024]]
        steps = split(users, self.p["idle_steps"])
        opened = failed = 0
        errors: set[str] = set()
        sources = source_addresses(users_n * per_user, self.p["source_addrs"]) or ["127.0.0.1"]
        say(f"  {mode}: {users_n * per_user} clients from {', '.join(sources)}, {len(self.loads)} load procs")
        for step_users in steps:
            res = self.open(svc, mode, step_users, per_user, total=users_n * per_user)
            opened, failed = opened + res["opened"], failed + res["failed"]
            errors.update(res["errors"])
            if peer:  # the peer sends headers only with the first event
                self.barrier(svc, [u for s in steps[: steps.index(step_users) + 1] for u in s], target)
            time.sleep(1.0)
            now = ProcStats.read_many(workers, svc.port)
            conns = sum(now[pid].sockets - base[pid].sockets for pid in workers)
            curve.append([conns, sum(s.rss_kb for s in now.values()) / 1024])
            say(f"  {mode}: {conns} connections, RSS {curve[-1][1]:.0f} MB (step took {res['seconds']}s)")
        all_subscribed = self.barrier(svc, users, target, timeout=120)
        now = ProcStats.read_many(workers, svc.port)
        per_worker = {
            str(pid): {
                "connections": now[pid].sockets - base[pid].sockets,
                "rss_growth_kb": now[pid].rss_kb - base[pid].rss_kb,
            }
            for pid in workers
        }
        conns = sum(w["connections"] for w in per_worker.values())
        growth = sum(w["rss_growth_kb"] for w in per_worker.values())
        redis_by_pid = redis_connections_by_pid(self.redis_url, workers)
        hold = self.p["idle_hold"]
        say(f"  {mode}: holding {conns} idle connections for {hold:.0f}s (heartbeats)")
        time.sleep(hold)
        before_final = self.count("w")
        self.reports({"cmd": "reset"})
        final = self.broadcast(svc, users, "f", 0, target)
        deadline = time.monotonic() + 60
        c = self.count("f")
        while c["got"] < c["clients"] and time.monotonic() < deadline:
            time.sleep(0.5)
            c = self.count("f")
        reps = self.reports({"cmd": "report", "phase": "f", "markers": [0]})
        self.close_all()
        return {
            "clients": c["clients"],
            "opened": opened if not peer else c["live"],
            "failed": failed + c["clients"] - c["live"],
            "errors": sorted(errors),
            "all_subscribed": all_subscribed,
            "connections": conns,
            "per_worker": per_worker,
            "kb_per_connection": round(growth / conns, 2) if conns else None,
            "curve_mb": curve,
            "redis_connections_per_worker": redis_by_pid,
            "live_after_hold": before_final["live"],
            "final_statuses": final["statuses"],
            "final_received": c["got"],
            "final_lost": sum(r["lost"] for r in reps),
            "final_duplicates": sum(r["duplicates"] for r in reps),
            "sources": sources,
            "load_procs": len(self.loads),
        }

    # -- (d) broadcast ------------------------------------------------------------------------
    def broadcast_rate(self, svc: AnyService, mode: str) -> dict[str, Any]:
        """One POST naming ``bc_users`` users, each with ``bc_per_user`` clients.

        First one POST at a time (end to end: POST sent to last delivery; fan-out: first to
        last delivery), then ``bc_repeats`` POSTs back to back (sustained: all deliveries
        over first POST sent to last delivery).
        """
        p = self.p
        users = [f"bc{i}" for i in range(p["bc_users"])]
        opened = self.open(svc, mode, users, p["bc_per_user"])
        self.barrier(svc, users, "ours")
        target = opened["opened"]
        single, fanout, complete = [], [], []
        self.lag(reset=True)

        def wait_for(ks: list[int]) -> list[list[int]]:
            deadline = time.monotonic() + 120
            while True:
                reps = self.reports({"cmd": "report", "phase": "b"})
                marks = [m for r in reps for k in ks if (m := r["markers"].get(str(k)))]
                if sum(m[0] for m in marks) >= target * len(ks) or time.monotonic() > deadline:
                    return marks
                time.sleep(0.2)

        for k in range(p["bc_repeats"]):
            self.reports({"cmd": "reset"})
            post = self.broadcast(svc, users, "b", k, "ours")
            marks = wait_for([k])
            count = sum(m[0] for m in marks)
            e2e_ns = max(m[3] for m in marks) - min(m[1] for m in marks) if marks else 0
            fan_ns = max(m[3] for m in marks) - min(m[2] for m in marks) if marks else 0
            single.append(count / (e2e_ns / 1e9) if e2e_ns else 0.0)
            fanout.append(count / (fan_ns / 1e9) if fan_ns else 0.0)
            complete.append(count == target)
            took = f"{e2e_ns / 1e6:.0f} ms, fan-out {fan_ns / 1e6:.0f} ms (POST {post['seconds']:.3f}s)"
            say(f"  broadcast {mode} #{k}: {count}/{target} in {took}")
        self.reports({"cmd": "reset"})
        ks = list(range(100, 100 + p["bc_repeats"]))
        cpu = cpu_seconds(svc.workers())
        self.poster.call(
            {"cmd": "post_batch", "url": svc.url, "key": API_KEY, "user_ids": users, "phase": "b", "ks": ks},
            timeout=300,
        )
        marks = wait_for(ks)
        cpu = cpu_seconds(svc.workers()) - cpu
        count = sum(m[0] for m in marks)
        span_ns = max(m[3] for m in marks) - min(m[1] for m in marks) if marks else 0
        sustained = count / (span_ns / 1e9) if span_ns else 0.0
        complete.append(count == target * len(ks))
        say(f"  broadcast {mode} back to back: {count}/{target * len(ks)} in {span_ns / 1e6:.0f} ms")
        drain = self.drain(svc)
        say(f"  broadcast {mode}: outbox markers cleared {drain:.1f} s after the last delivery")
        self.close_all()
        return {
            "clients": target,
            "users": len(users),
            "deliveries_per_second": sustained,
            "single_post_per_second": statistics.median(single) if single else 0.0,
            "fanout_per_second": statistics.median(fanout) if fanout else 0.0,
            "writeback_drain_seconds": round(drain, 2),
            "with_writeback_per_second": count / (span_ns / 1e9 + drain) if span_ns else 0.0,
            "single_all": single,
            "worker_cpu_us_per_delivery": round(cpu / max(count, 1) * 1e6, 1),
            "all_delivered": all(complete),
            **self.lag(),
        }

    def drain(self, svc: AnyService, limit: float = 120.0) -> float:
        """Seconds until MongoDB holds no outbox marker (every batch recorded as published).

        After a publish, each batch's marker is removed by a second write; a burst can
        outrun those writes, and the next measure would pay for them. Polled, bounded.
        """
        if svc.kind != "ours":
            return 0.0
        client: MongoClient = MongoClient(svc.mongo_uri, directConnection=True)
        try:
            coll = client.get_default_database()["notifications"]
            marked = MARKERS  # batches not yet recorded as published
            started = time.monotonic()
            while coll.count_documents(marked, limit=1) and time.monotonic() - started < limit:
                time.sleep(0.1)
            return time.monotonic() - started
        finally:
            client.close()

    def settle(self, svc: AnyService, limit: float = 60.0, left: int = 200) -> float:
        """Seconds until the service has closed the previous measure's streams (at most
        ``left`` client connections open: the posters' keep-alive pools). Polled, bounded.

        Closing 10,000 streams takes the workers a second or more; without this, a
        measure that follows one with many clients would pay for their teardown.
        """
        started = time.monotonic()
        while time.monotonic() - started < limit:
            if sum(s.sockets for s in ProcStats.read_many(svc.workers(), svc.port).values()) <= left:
                break
            time.sleep(0.1)
        return time.monotonic() - started

    # -- (e) POST throughput --------------------------------------------------------------------
    def throughput(self, svc: AnyService) -> dict[str, Any]:
        """POSTs from ``tp_clients`` keep-alive clients (the Node.js peer's: to A and B in turn)."""
        users = [f"tp{i}" for i in range(200)]
        pids = svc.workers()
        before = [cpu_seconds([pid]) for pid in pids]
        urls = [svc.url, svc.post_url] if svc.kind == "node" else [svc.url]
        res = self.poster.call(
            {"cmd": "throughput", "urls": urls, "key": API_KEY, "users": users, "target": svc.kind,
             "clients": self.p["tp_clients"], "seconds": self.p["tp_seconds"]},
            timeout=self.p["tp_seconds"] + 60,
        )  # fmt: skip
        used = [cpu_seconds([pid]) - b for pid, b in zip(pids, before, strict=True)]
        res["worker_cpu_us_per_post"] = round(sum(used) / max(res["ok"], 1) * 1e6)
        res["worker_cpu_seconds"] = [round(u, 2) for u in used]  # how evenly the workers shared it
        return res

    def profile(self, svc: AnyService, label: str) -> list[subprocess.Popen[bytes]]:
        """py-spy on every worker for the length of one measure (collapsed stacks; Python only)."""
        if svc.kind == "node":
            say(f"  not profiling {label}: py-spy reads Python processes only")
            return []
        spy = str(Path(PY).parent / "py-spy")
        (RESULTS / "tmp").mkdir(parents=True, exist_ok=True)
        procs = []
        for pid in svc.workers():
            out = RESULTS / "tmp" / f"profile-{label}-{pid}.txt"
            argv = [spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "-o", str(out)]
            procs.append(subprocess.Popen([*argv, "--nonblocking"], stdout=subprocess.DEVNULL))
        say(f"  profiling {label} -> {RESULTS}/tmp/profile-{label}-<pid>.txt")
        return procs

    # -- one run ----------------------------------------------------------------------------
    def run_once(self) -> dict[str, Any]:
        self.run_no += 1
        tag = f"{int(time.time())}{self.run_no}"
        p, skip, out = self.p, set(self.args.skip), {"ours": {}, "peer": {}, "node": {}}
        n_idle = p["idle_users"] * p["idle_per_user"]
        n_peer = p["peer_idle_users"] * p["peer_idle_per_user"]
        n_node = p["node_idle_users"] * p["node_idle_per_user"]
        step: list[tuple[str, str, Callable[[AnyService], dict[str, Any]]]] = []
        if self.args.only in (None, "ours"):
            step += [
                ("ours", "latency_sse", lambda s: self.latency(s, "ours-sse")),
                ("ours", "latency_ws", lambda s: self.latency(s, "ours-ws")),
                ("ours", "broadcast_sse", lambda s: self.broadcast_rate(s, "ours-sse")),
                ("ours", "broadcast_ws", lambda s: self.broadcast_rate(s, "ours-ws")),
                ("ours", "throughput", self.throughput),
                ("ours", "idle_sse", lambda s: self.idle(s, "ours-sse", p["idle_users"], p["idle_per_user"])),
                ("ours", "idle_ws", lambda s: self.idle(s, "ours-ws", p["idle_users"], p["idle_per_user"])),
            ]
        if self.args.only in (None, "peer"):
            peer_idle = (p["peer_idle_users"], p["peer_idle_per_user"])
            step += [
                ("peer", "latency_sse", lambda s: self.latency(s, "peer-sse")),
                ("peer", "idle_sse", lambda s: self.idle(s, "peer-sse", *peer_idle)),
            ]
        if self.args.only in (None, "node") and self.node:
            node_idle = (p["node_idle_users"], p["node_idle_per_user"])
            step += [
                ("node", "latency_ws", lambda s: self.latency(s, "node-ws")),
                ("node", "throughput", self.throughput),
                ("node", "idle_ws", lambda s: self.idle(s, "node-ws", *node_idle)),
            ]
        svc: AnyService | None = None
        for kind, name, fn in step:
            if name in skip:
                continue
            # a fresh server for each memory measure (freed memory would be reused otherwise)
            if svc is None or svc.kind != kind or name.startswith("idle"):
                if svc is not None:
                    svc.stop()
                svc = self.start(kind, f"{tag}{len(out[kind])}")
            if kind == "ours":
                self.drain(svc)  # the previous measure's write-back is not this one's cost
            self.settle(svc)  # nor its streams' teardown
            say(f"run {self.run_no}: {kind} {name} ...")
            started = time.monotonic()
            spies = self.profile(svc, f"{kind}-{name}") if name in self.args.profile else []
            try:
                out[kind][name] = fn(svc)
            except RuntimeError as exc:
                say(f"  {kind} {name} failed: {exc}")
                out[kind][name] = {"error": str(exc)}
                with_retry_close(self)
            for spy in spies:
                spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                spy.wait(30)
            out[kind][name]["seconds"] = round(time.monotonic() - started, 1)
            brief = {
                k: v for k, v in out[kind][name].items() if k not in ("hist_ms", "curve_mb", "per_worker")
            }
            say(f"  {kind} {name}: {json.dumps(brief)[:600]}")
        if svc is not None:
            svc.stop()
        out["sizes"] = {
            "idle_connections": n_idle,
            "peer_idle_connections": n_peer,
            "node_idle_connections": n_node,
        }
        return out


def with_retry_close(bench: Bench) -> None:
    with contextlib.suppress(RuntimeError):
        bench.close_all()


def loadgen_bound(lag: dict[str, Any], pcts: dict[str, float | None]) -> bool | None:
    """True where the generator's loop lag p99 exceeds a quarter of the latency p99: the
    figure then measures the load generator, not the service."""
    if lag["loadgen_lag_p99_ms"] is None or pcts["p99_ms"] is None:
        return None
    return bool(lag["loadgen_lag_p99_ms"] > pcts["p99_ms"] / 4)


def pcts_ms(samples_us: list[int]) -> dict[str, float | None]:
    if not samples_us:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    n = len(samples_us)
    return {
        "p50_ms": round(samples_us[n // 2] / 1000, 3),
        "p99_ms": round(samples_us[min(int(n * 0.99), n - 1)] / 1000, 3),
        "max_ms": round(samples_us[-1] / 1000, 3),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dev.py bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a minute: for developing")
    parser.add_argument(
        "--ack",
        action="store_true",
        help="clients acknowledge what arrived once a second (receipts: WS frames, SSE POSTs)",
    )
    parser.add_argument(
        "--runs", type=int, default=None, help="repeat the whole run N times (default 3, quick 1)"
    )
    parser.add_argument("--only", choices=("ours", "peer", "node"), default=None,
                        help="one side: ours, the Flask-SSE peer or the Node.js peer")  # fmt: skip
    parser.add_argument("--skip", type=lambda s: [x for x in s.split(",") if x], default=[],
                        help="comma-separated measures to skip, e.g. idle_ws,throughput")  # fmt: skip
    parser.add_argument(
        "--profile",
        type=lambda s: [x for x in s.split(",") if x],
        default=[],
        help="comma-separated measures to run py-spy on (writes profile-*.txt in the results folder's tmp/)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        type=lambda kv: (
            kv.split("=", 1)[0],
            float(kv.split("=", 1)[1]) if "." in kv else int(kv.split("=", 1)[1]),
        ),
        help="override a size of the profile, e.g. --set bc_users=1000 (repeatable)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        type=lambda kv: tuple(kv.split("=", 1)),
        help="an extra setting for our service, e.g. --env LEAN_API=0 (repeatable; A/B runs)",
    )
    parser.add_argument(
        "--mongo-data", default="", help="SecantusDB data directory to start on (default: a fresh one)"
    )
    parser.add_argument(
        "--tree",
        default="",
        help="serve ours from this checkout instead (a `git worktree` of an earlier commit; its own .venv "
        "if it has one), with this load generator: before/after figures from alternating runs",
    )
    parser.add_argument(
        "--mongo-db",
        default="",
        help="database ours and Flask-SSE use (default: a fresh one per service; Node.js: always its own)",
    )
    parser.add_argument("--max-minutes", type=float, default=0, help="start no run that would end past this")
    parser.add_argument("--out", default=str(RESULTS / "latest"), help="results path prefix")
    parser.add_argument("--note", default="", help="a line for the results (e.g. 'machine shared')")
    args = parser.parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    workdir = ROOT / ".devdata" / "bench"
    workdir.mkdir(parents=True, exist_ok=True)
    wants_node = args.only in (None, "node")
    node_skipped = install_node_peer() if wants_node else ""
    if node_skipped:
        say(f"skipping the Node.js peer: {node_skipped}")
        if args.only == "node":
            return 1
    redis = redis_server()
    redis.argv += ["--maxclients", "19000"]  # Flask-SSE holds one Redis connection per client
    mongo = mongo_server(data_dir=Path(args.mongo_data)) if args.mongo_data else mongo_server()
    say(f"starting redis-server and SecantusDB ({workdir})")
    redis.start()
    mongo.start()
    bench = Bench(args, redis.url, mongo.url, workdir, node=wants_node and not node_skipped)
    results: list[dict[str, Any]] = []
    started = time.time()
    load_at_start, speed_at_start = os.getloadavg(), speed_probe_ms()

    def save() -> list[Path]:
        meta = {
            "command": "python3 dev.py bench " + " ".join(argv),
            "profile": "quick" if args.quick else "full",
            "runs": len(results),
            "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)),
            "seconds": round(time.time() - started),
            "cpus": os.cpu_count(),
            "load_avg_at_start": load_at_start,
            "load_avg_at_end": os.getloadavg(),
            "speed_probe_ms": [speed_at_start, speed_probe_ms()],
            "note": args.note,
            "node_skipped": node_skipped,
            "ack": args.ack,
            "env": dict(args.env),
            "sizes": {**PROFILES["quick" if args.quick else "full"], **dict(args.set)},
        }
        return write_results(Path(args.out), meta, results)

    try:
        for n in range(runs):
            run_started = time.time()
            results.append(bench.run_once())
            paths = save()  # after every run: an interrupted benchmark still leaves its results
            took = time.time() - run_started
            say(f"run {n + 1} of {runs} took {took:.0f}s; wrote " + ", ".join(str(p) for p in paths))
            if args.max_minutes and time.time() - started + took > args.max_minutes * 60 and n + 1 < runs:
                say(f"stopping after {n + 1} runs: another would pass --max-minutes {args.max_minutes}")
                break
    finally:
        bench.close()
        mongo.stop()
        redis.stop()
    if not results:
        return 1
    print(paths[0].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
