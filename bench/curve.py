"""The cost curve over clients: what a fixed POST rate costs as more clients are connected.

    .venv/bin/python bench/curve.py [--sizes 1000,2000,5000,10000,20000] [--transport ws,sse]
        [--rate 200] [--per-user 10] [--seconds 20] [--quick] [--max-minutes 60]

For each transport and size, a fresh service (gunicorn, ``--workers`` gevent workers) and
``bench/run.py``'s latency measure on it: ``size`` clients over ``size / per_user`` users,
``rate × seconds`` single-user POSTs at ``rate``/s (marker k to user k % users), so the
deliveries per second stay ``rate × per_user`` while the clients grow. Each point reports
latency p50/p99/max, the load generator's loop lag p99, worker CPU per delivery and with
nothing posted, worker RSS per connection, and delivered / lost / duplicates. It reuses
``bench/run.py`` (Bench, Service, LoadProc) and ``tools/devservers.py``'s servers. Writes
``curve.json``, ``curve.md`` and ``curve.png`` to the results folder (``bench/report.py``
results_dir(), git-ignored) after every point. Every wait is bounded; no point starts
that would end past ``--max-minutes``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import run  # noqa: E402
from bench.measure import speed_probe_ms  # noqa: E402
from bench.report import results_dir  # noqa: E402
from tools.devservers import mongo_server, redis_server  # noqa: E402

CLIENTS_PER_LOAD_PROC = 5000  # a load process's loop stays prompt (its lag is in every row)
KEPT = ("clients", "failed", "posts", "rate", "post_errors", "post_ms", "expected", "received", "lost",
        "duplicates", "stray", "p50_ms", "p99_ms", "max_ms", "loadgen_lag_p50_ms", "loadgen_lag_p99_ms",
        "loadgen_lag_max_ms", "loadgen_lag_p99_by_proc", "load_procs", "loadgen_bound",
        "worker_cpu_us_per_delivery", "worker_cpu_cores", "loadgen_cpu_us_per_delivery",
        "quiet_worker_cores", "connections", "kb_per_connection", "sources")  # fmt: skip


def parse(argv: list[str]) -> argparse.Namespace:
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    parser = argparse.ArgumentParser(prog="bench/curve.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=ints, default=None, help="clients per point (default 1000,...,20000)")
    parser.add_argument("--transport", default="ws,sse", help="ws, sse or ws,sse (one curve each)")
    parser.add_argument("--rate", type=int, default=200, help="POSTs per second, each to one user")
    parser.add_argument("--per-user", type=int, default=10, help="clients per user")
    parser.add_argument("--seconds", type=float, default=None, help="of POSTs per point (default 20)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (WEB_CONCURRENCY)")
    per_proc = f"{CLIENTS_PER_LOAD_PROC:,}"
    parser.add_argument("--load-procs", type=int, default=0,
                        help=f"load processes (default: one per {per_proc} clients, 2 at least)")  # fmt: skip
    parser.add_argument("--heartbeat", type=int, default=15, help="the service's HEARTBEAT_SECONDS")
    parser.add_argument("--quiet-seconds", type=float, default=3.0,
                        help="worker CPU measured this long, nothing posted, before the POSTs")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="200,500,1000 clients, 5 s: for developing")
    parser.add_argument("--env", action="append", default=[], type=lambda kv: tuple(kv.split("=", 1)),
                        help="a setting for the service, e.g. --env LEAN_API=0 (repeatable)")  # fmt: skip
    parser.add_argument(
        "--max-minutes", type=float, default=60, help="start no point that would end past this"
    )
    parser.add_argument("--out", default=str(results_dir() / "curve"), help="results path prefix")
    parser.add_argument("--note", default="", help="a line for the results (e.g. 'machine shared')")
    args = parser.parse_args(argv)
    args.sizes = args.sizes or ([200, 500, 1000] if args.quick else [1000, 2000, 5000, 10000, 20000])
    args.seconds = args.seconds or (5.0 if args.quick else 20.0)
    args.transports = [t for t in args.transport.split(",") if t]
    if not set(args.transports) <= {"ws", "sse"} or any(n < args.per_user for n in args.sizes):
        parser.error("--transport takes ws and/or sse; every size needs at least --per-user clients")
    return args


def bench_args(args: argparse.Namespace) -> argparse.Namespace:
    """What ``run.Bench`` reads from its command line: the full profile, these overrides."""
    procs = args.load_procs or max(2, math.ceil(max(args.sizes) / CLIENTS_PER_LOAD_PROC))
    not_run = [(f"{m}_users", 0) for m in ("idle", "bc", "peer_idle", "node_idle")]  # sizes no process for
    sets = [
        ("load_procs", procs),
        ("heartbeat", args.heartbeat),
        ("lat_quiet", args.quiet_seconds),
        ("lat_users", max(args.sizes) // args.per_user),
        ("lat_per_user", args.per_user),
        *not_run,
    ]
    env = [("WEB_CONCURRENCY", str(args.workers)), *args.env]
    return argparse.Namespace(quick=False, set=sets, env=env, mongo_db="", ack=False, tree="")


def point(bench: run.Bench, args: argparse.Namespace, transport: str, size: int, tag: str) -> dict[str, Any]:
    """One size on a fresh service: bench/run.py's latency measure at these sizes."""
    users = size // args.per_user
    bench.p.update(lat_users=users, lat_per_user=args.per_user, lat_rate=args.rate,
                   lat_posts=round(args.rate * args.seconds))  # fmt: skip
    started = time.monotonic()
    out: dict[str, Any] = {"transport": transport, "size": size, "users": users}
    svc = bench.start("ours", tag)
    try:
        res = bench.latency(svc, f"ours-{transport}")
        out |= {k: res[k] for k in KEPT}
    except RuntimeError as exc:
        out["error"] = str(exc)
        with contextlib.suppress(RuntimeError):
            bench.close_all()
    finally:
        svc.stop()
    out["seconds"] = round(time.monotonic() - started, 1)
    return out


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}g}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _ratio(now: float | None, before: float | None) -> str:
    return f"×{now / before:.2f}" if now is not None and before else "—"


def markdown(meta: dict[str, Any], points: list[dict[str, Any]]) -> str:
    def loads(key: str) -> str:
        return ", ".join(f"{x:.1f}" for x in meta[key])

    lines = [
        f"Command: `{meta['command']}` · started {meta['started_utc']} UTC · {meta['seconds']} s · "
        f"{meta['cpus']} CPUs · load average at start {loads('load_avg_at_start')}, at end "
        f"{loads('load_avg_at_end')} · speed probe {meta['speed_probe_ms'][0]:.0f} → "
        f"{meta['speed_probe_ms'][1]:.0f} ms",
        f"{meta['workers']} workers · {meta['rate']} POSTs/s, each to one user, "
        f"{meta['seconds_of_posts']:.0f} s a point · {meta['per_user']} clients per user · "
        f"{meta['load_procs']} load processes",
        *([f"Note: {meta['note']}"] if meta.get("note") else []),
        "",
        "Columns: latency POST sent → receipt over every delivery; lag: the load generator's worst "
        "process's loop lag p99 (**load generator** where it exceeds a quarter of the p99: the figure "
        "measures the generator; rerun with more `--load-procs`); CPU per delivery: the workers' user + "
        "system time while the POSTs ran over the deliveries (POST handling included); quiet: worker cores "
        "busy with the clients connected and nothing posted; KB per connection: worker RSS growth over "
        "the connections accepted; ×: against the previous size.",
        "",
        "| transport | clients | users | p50 ms | p99 ms | p99 × | max ms | lag p99 ms | measures "
        "| worker CPU µs/delivery | × | worker cores (posting / quiet) | generator CPU µs/delivery "
        "| KB/connection | delivered / expected | lost | dup | failed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    before: dict[str, dict[str, Any]] = {}
    for pt in points:
        if "error" in pt:
            lines.append(f"| {pt['transport']} | {pt['size']:,} | {pt['users']:,} | failed: {pt['error']} |")
            continue
        prev = before.get(pt["transport"], {})
        measures = "**load generator**" if pt["loadgen_bound"] else "service"
        cells = [
            pt["transport"], _fmt(pt["clients"]), _fmt(pt["users"]), _fmt(pt["p50_ms"]), _fmt(pt["p99_ms"]),
            _ratio(pt["p99_ms"], prev.get("p99_ms")), _fmt(pt["max_ms"]), _fmt(pt["loadgen_lag_p99_ms"]),
            measures, _fmt(pt["worker_cpu_us_per_delivery"]),
            _ratio(pt["worker_cpu_us_per_delivery"], prev.get("worker_cpu_us_per_delivery")),
            f"{_fmt(pt['worker_cpu_cores'])} / {_fmt(pt['quiet_worker_cores'])}",
            _fmt(pt["loadgen_cpu_us_per_delivery"]), _fmt(pt["kb_per_connection"]),
            f"{pt['received']:,} / {pt['expected']:,}", _fmt(pt["lost"]), _fmt(pt["duplicates"]),
            _fmt(pt["failed"]),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
        before[pt["transport"]] = pt
    return "\n".join(lines) + "\n"


def plot(path: Path, points: list[dict[str, Any]]) -> None:
    """Latency, CPU per delivery, quiet CPU and RSS per connection against clients (as
    bench/report.py draws: matplotlib, Agg, imported here only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    colors = {"ws": "tab:orange", "sse": "tab:blue"}
    panels = [
        (axes[0][0], "delivery latency (ms)", [("p50_ms", "p50", "-"), ("p99_ms", "p99", "--"),
                                               ("loadgen_lag_p99_ms", "generator lag p99", ":")]),
        (axes[0][1], "worker CPU per delivery (µs)", [("worker_cpu_us_per_delivery", "", "-")]),
        (axes[1][0], "worker cores busy, nothing posted", [("quiet_worker_cores", "", "-")]),
        (axes[1][1], "worker RSS per connection (KB)", [("kb_per_connection", "", "-")]),
    ]  # fmt: skip
    for transport in colors:
        mine = [pt for pt in points if pt["transport"] == transport and "error" not in pt]
        for ax, _, series in panels:
            for key, label, style in series:
                xy = [(pt["clients"], pt[key]) for pt in mine if pt.get(key) is not None]
                if xy:
                    xs, ys = zip(*xy, strict=True)
                    name = f"{transport.upper()} {label}".strip()
                    ax.plot(xs, ys, style, marker="o", color=colors[transport], label=name)
    sizes = sorted({pt["clients"] for pt in points if "error" not in pt})
    for ax, title, _ in panels:
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        if ax is not axes[0][0]:
            ax.set_ylim(bottom=0)
        ax.set_xlabel("connected clients (log)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    axes[0][0].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(prefix: Path, meta: dict[str, Any], points: list[dict[str, Any]]) -> list[Path]:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    md, js, png = prefix.with_suffix(".md"), prefix.with_suffix(".json"), prefix.with_suffix(".png")
    md.write_text(markdown(meta, points))
    js.write_text(json.dumps({"meta": meta, "points": points}, indent=1, default=str))
    plot(png, points)
    return [md, js, png]


def main(argv: list[str]) -> int:
    args = parse(argv)
    workdir = ROOT / ".devdata" / "bench"
    workdir.mkdir(parents=True, exist_ok=True)
    redis, mongo = redis_server(), mongo_server()
    run.say(f"starting redis-server and SecantusDB ({workdir})")
    redis.start()
    mongo.start()
    bench = run.Bench(bench_args(args), redis.url, mongo.url, workdir, node=False)
    started, points, paths = time.time(), [], []
    meta: dict[str, Any] = {
        "command": "bench/curve.py " + " ".join(argv),
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)),
        "cpus": os.cpu_count(),
        "load_avg_at_start": os.getloadavg(),
        "speed_probe_ms": [speed_probe_ms()],
        "workers": args.workers,
        "rate": args.rate,
        "per_user": args.per_user,
        "seconds_of_posts": args.seconds,
        "load_procs": len(bench.loads),
        "note": args.note,
    }
    try:
        longest = 0.0
        for transport in args.transports:
            for size in args.sizes:
                # the next point takes at least as long as the longest so far (it is no smaller)
                if time.time() - started + longest > args.max_minutes * 60:
                    run.say(
                        f"stopping before {transport} {size}: it would pass --max-minutes {args.max_minutes}"
                    )
                    break
                run.say(f"{transport}: {size} clients ...")
                pt = point(bench, args, transport, size, f"c{int(time.time())}{len(points)}")
                longest = max(longest, pt["seconds"])
                points.append(pt)
                run.say(f"  {json.dumps({k: v for k, v in pt.items() if k != 'loadgen_lag_p99_by_proc'})}")
                meta |= {"seconds": round(time.time() - started), "load_avg_at_end": os.getloadavg()}
                meta["speed_probe_ms"] = [meta["speed_probe_ms"][0], speed_probe_ms()]
                paths = write(Path(args.out), meta, points)  # an interrupted curve keeps its points
    finally:
        bench.close()
        mongo.stop()
        redis.stop()
    if not paths:
        return 1
    run.say("wrote " + ", ".join(str(p) for p in paths))
    print(paths[0].read_text())
    return 0 if all("error" not in pt for pt in points) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
