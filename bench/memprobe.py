"""Where a connection's memory goes: one gunicorn worker, N idle streams, RSS and tracemalloc.

    .venv/bin/python bench/memprobe.py --mode ours-sse -n 2000 [--trace]

Without ``--trace`` it reports RSS growth per connection (tracemalloc itself costs memory);
with it, the Python allocations per connection grouped by source line.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.measure import ProcStats  # noqa: E402
from bench.run import SECRET, LoadProc, Service  # noqa: E402
from tools.devservers import mongo_server, redis_server  # noqa: E402


def snap(folder: Path, pid: int, name: str) -> Path:
    (folder / f"snap-{pid}").write_text(name)
    deadline = time.monotonic() + 60
    while not (folder / f"{name}-{pid}.done").exists():
        if time.monotonic() > deadline:
            raise RuntimeError("worker did not take the snapshot")
        time.sleep(0.1)
    return folder / f"{name}-{pid}.snap"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="ours-sse", choices=("ours-sse", "ours-ws"))
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--group", default="lineno", choices=("lineno", "traceback", "filename"))
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="memprobe-"))
    with redis_server() as redis, mongo_server() as mongo:
        env = {
            "APP_ENV": "production", "SECRET_KEY": SECRET, "API_KEYS": "probe-key",
            "REDIS_URL": redis.url, "MONGO_URI": mongo.url + "probe", "WEB_CONCURRENCY": "1",
            "LOG_LEVEL": "warning", "MEMPROBE_DIR": str(folder),
            "MEMPROBE_TRACE": "1" if args.trace else "0",
        }  # fmt: skip
        os.environ.update(env)
        svc = Service.__new__(Service)
        svc_argv_conf = str(ROOT / "bench" / "memprobe_conf.py")
        svc = _start(svc, svc_argv_conf, folder)
        load = LoadProc("probe")
        try:
            pid = svc.workers()[0]
            users = [f"m{i}" for i in range(max(1, args.n // 10))]
            # warm up: one stream and close it, so lazily created pools are not counted
            load.call({"cmd": "open", "mode": args.mode, "url": svc.url, "users": ["warm"], "per_user": 1,
                       "secret": SECRET})  # fmt: skip
            load.call({"cmd": "close"})
            time.sleep(1)
            before = ProcStats.read(pid, svc.port)
            first = snap(folder, pid, "before")
            res = load.call({"cmd": "open", "mode": args.mode, "url": svc.url, "users": users,
                             "per_user": args.n // len(users), "secret": SECRET}, timeout=300)  # fmt: skip
            time.sleep(2)
            after = ProcStats.read(pid, svc.port)
            second = snap(folder, pid, "after")
            conns = after.sockets - before.sockets
            growth = after.rss_kb - before.rss_kb
            print(f"{args.mode}: opened {res['opened']} failed {res['failed']}; {conns} connections; "
                  f"RSS +{growth} KB = {growth / max(conns, 1):.2f} KB per connection")  # fmt: skip
            if args.trace:
                a, b = tracemalloc.Snapshot.load(str(first)), tracemalloc.Snapshot.load(str(second))
                stats = b.compare_to(a, args.group)
                total, per = sum(s.size_diff for s in stats), max(conns, 1)
                print(f"traced Python allocations: +{total / 1024:.0f} KB = {total / per:.0f} B/conn")
                for s in stats[: args.top]:
                    lines = s.traceback.format()
                    where = lines[-1] if args.group != "traceback" else "\n".join(lines)
                    print(f"{s.size_diff / per:8.0f} B/conn {s.count_diff / per:6.2f} blk  {where}")
        finally:
            load.stop()
            svc.stop()


def _start(svc: Service, conf: str, folder: Path) -> Service:
    import signal  # noqa: F401
    import subprocess

    from tools.devservers import find_free_port

    svc.kind = "ours"
    svc.port = find_free_port()
    svc.url = f"http://127.0.0.1:{svc.port}"
    svc.log = open(folder / "gunicorn.log", "ab")  # noqa: SIM115
    env = {**os.environ, "PORT": str(svc.port), "HOST": "127.0.0.1"}
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    svc.proc = subprocess.Popen([gunicorn, "-c", conf, "wsgi:app"], cwd=ROOT, env=env, stdout=svc.log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(svc.url + "/healthz", timeout=1) as resp:
                if resp.status == 200 and svc.workers():
                    return svc
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"gunicorn did not start; see {folder}/gunicorn.log")


if __name__ == "__main__":
    main()
