"""Turn the runs' raw figures into latest.{json,md,png} in the results folder: medians and spread.

Results stay out of git: they go to ``$NOTIFY_BENCH_OUT``, by default the git-ignored
``.bench-results/`` at the top of the checkout. The README states the current figures by hand.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

Getter = Callable[[dict[str, Any]], float | None]


def results_dir() -> Path:
    """Where the benchmark writes: ``$NOTIFY_BENCH_OUT``, else ``.bench-results/`` (git-ignored)."""
    configured = os.environ.get("NOTIFY_BENCH_OUT")
    return Path(configured) if configured else Path(__file__).resolve().parent.parent / ".bench-results"


def _get(*path: str) -> Getter:
    def get(side: dict[str, Any]) -> float | None:
        value: Any = side
        for key in path:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return value if isinstance(value, (int, float)) else None

    return get


def _errors(name: str) -> Getter:
    def get(side: dict[str, Any]) -> float | None:
        m = side.get(name)
        if not m or "lost" not in m:
            return None
        return (
            m["lost"]
            + m["duplicates"]
            + m["stray"]
            + (m["expected"] - m["received"] if m["received"] < m["expected"] else 0)
        )

    return get


def _held(name: str) -> Getter:
    """Idle connections that were all still there and got the final broadcast exactly once."""

    def get(side: dict[str, Any]) -> float | None:
        m = side.get(name)
        if not m or "final_received" not in m:
            return None
        ok = m["final_lost"] == 0 and m["final_duplicates"] == 0 and m["failed"] == 0
        return m["final_received"] if ok else -m["final_received"]

    return get


def _min_per_worker(name: str) -> Getter:
    def get(side: dict[str, Any]) -> float | None:
        m = side.get(name)
        if not m or "per_worker" not in m:
            return None
        return min(w["connections"] for w in m["per_worker"].values())

    return get


def _redis_per_worker(side: dict[str, Any]) -> float | None:
    counts = [
        n
        for name in ("idle_sse", "idle_ws")
        for pid, n in (side.get(name) or {}).get("redis_connections_per_worker", {}).items()
        if pid != "total_clients"
    ]
    return max(counts) if counts else None


LAG_SSE = "SSE: load generator's loop lag p99 (ms)"
LAG_WS = "WS: load generator's loop lag p99 (ms)"
# A lag row is judged against a quarter of its latency p99 (per side): above it, that
# p99 measures the load generator (bench/README.md, "The load generator's loop lag").
LAG_OF = {LAG_SSE: "SSE latency p99 (ms)", LAG_WS: "WS latency p99 (ms)"}

# (measure, getter, target text, target check, lower is better)
ROWS: list[tuple[str, Getter, str, Callable[[float], bool], bool]] = [
    ("SSE latency p50 (ms)", _get("latency_sse", "p50_ms"), "≤ 3", lambda v: v <= 3, True),
    ("SSE latency p99 (ms)", _get("latency_sse", "p99_ms"), "≤ 10", lambda v: v <= 10, True),
    (LAG_SSE, _get("latency_sse", "loadgen_lag_p99_ms"), "≤ ¼ of the p99", lambda v: True, True),
    ("WS latency p50 (ms)", _get("latency_ws", "p50_ms"), "≤ 3", lambda v: v <= 3, True),
    ("WS latency p99 (ms)", _get("latency_ws", "p99_ms"), "≤ 10", lambda v: v <= 10, True),
    (LAG_WS, _get("latency_ws", "loadgen_lag_p99_ms"), "≤ ¼ of the p99", lambda v: True, True),
    ("SSE lost + duplicate deliveries", _errors("latency_sse"), "0", lambda v: v == 0, True),
    ("WS lost + duplicate deliveries", _errors("latency_ws"), "0", lambda v: v == 0, True),
    (
        "idle SSE connections held, all got the final broadcast",
        _held("idle_sse"),
        "20,000",
        lambda v: v >= 20000,
        False,
    ),
    (
        "idle WS connections held, all got the final broadcast",
        _held("idle_ws"),
        "20,000",
        lambda v: v >= 20000,
        False,
    ),
    (
        "idle SSE connections on the less loaded worker",
        _min_per_worker("idle_sse"),
        "10,000",
        lambda v: v >= 10000,
        False,
    ),
    (
        "idle WS connections on the less loaded worker",
        _min_per_worker("idle_ws"),
        "10,000",
        lambda v: v >= 10000,
        False,
    ),
    (
        "memory per idle SSE connection (KB RSS)",
        _get("idle_sse", "kb_per_connection"),
        "≤ 12",
        lambda v: v <= 12,
        True,
    ),
    (
        "memory per idle WS connection (KB RSS)",
        _get("idle_ws", "kb_per_connection"),
        "≤ 12",
        lambda v: v <= 12,
        True,
    ),
    (
        "broadcast over SSE (deliveries/s)",
        _get("broadcast_sse", "deliveries_per_second"),
        "≥ 30,000",
        lambda v: v >= 30000,
        False,
    ),
    (
        "broadcast over WS (deliveries/s)",
        _get("broadcast_ws", "deliveries_per_second"),
        "≥ 30,000",
        lambda v: v >= 30000,
        False,
    ),
    (
        "broadcast over SSE, one POST at a time (POST sent to last delivery, /s)",
        _get("broadcast_sse", "single_post_per_second"),
        "—",
        lambda v: True,
        False,
    ),
    (
        "broadcast over SSE, fan-out only (first to last delivery, /s)",
        _get("broadcast_sse", "fanout_per_second"),
        "—",
        lambda v: True,
        False,
    ),
    (
        "broadcast over SSE, back to back until MongoDB records every batch as published (/s)",
        _get("broadcast_sse", "with_writeback_per_second"),
        "—",
        lambda v: True,
        False,
    ),
    (
        "POST throughput, 32 keep-alive clients (/s)",
        _get("throughput", "per_second"),
        "≥ 2,000",
        lambda v: v >= 2000,
        False,
    ),
    ("Redis connections per worker (max, idle phase)", _redis_per_worker, "≤ 4", lambda v: v <= 4, True),
]


# the rows the Node.js peer shares with ours (its streams are WebSockets on one instance)
NODE_ROWS = {
    "WS latency p50 (ms)",
    "WS latency p99 (ms)",
    LAG_WS,
    "WS lost + duplicate deliveries",
    "idle WS connections held, all got the final broadcast",
    "memory per idle WS connection (KB RSS)",
    "POST throughput, 32 keep-alive clients (/s)",
}
PEERS = {"peer": "Flask-SSE", "node": "Node.js"}


def _fmt(v: float | None) -> str:
    if v is None:
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per row: each side's median and spread, the target, and how ours compares with the
    peers measured there ("better" is as good as or better than all of them)."""
    rows = []
    for label, get, target, check, lower in ROWS:
        row: dict[str, Any] = {"measure": label, "target": target}
        for side in ("ours", *PEERS):
            shared = side != "node" or label in NODE_ROWS
            values = [v for r in results if shared and (v := get(r.get(side, {}))) is not None]
            row[side] = {
                "median": statistics.median(values) if values else None,
                "min": min(values) if values else None,
                "max": max(values) if values else None,
                "runs": values,
            }
        ours = row["ours"]["median"]
        row["target_met"] = ours is not None and check(ours)
        sized = label.startswith("idle")  # counts at the sizes each side was run at: no ratio
        peers = {side: row[side]["median"] for side in PEERS if row[side]["median"] is not None}
        row["worse_than"] = [
            name
            for side, name in PEERS.items()
            if side in peers and ours is not None and not sized
            and not (ours <= peers[side] if lower else ours >= peers[side])
        ]  # fmt: skip
        row["better_than_peer"] = None if ours is None or not peers or sized else not row["worse_than"]
        rows.append(row)
    by_label = {row["measure"]: row for row in rows}
    for lag_label, p99_label in LAG_OF.items():
        row, p99 = by_label[lag_label], by_label[p99_label]["ours"]["median"]
        lag = row["ours"]["median"]
        row["target_met"] = lag is not None and p99 is not None and lag <= p99 / 4
        row["worse_than"], row["better_than_peer"] = [], None  # not a comparison with the peers
    return rows


def _cell(stats: dict[str, Any]) -> str:
    med = stats["median"]
    if med is None:
        return "—"
    if len(stats["runs"]) > 1 and stats["min"] != stats["max"]:
        return f"{_fmt(med)} ({_fmt(stats['min'])}–{_fmt(stats['max'])})"
    return _fmt(med)


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]], results: list[dict[str, Any]]) -> str:
    lines = [
        f"Command: `{meta['command'].strip()}` · profile {meta['profile']} · {meta['runs']} run(s) · "
        f"started {meta['started_utc']} UTC · {meta['seconds']} s · {meta['cpus']} CPUs · "
        f"load average at start {', '.join(f'{x:.1f}' for x in meta.get('load_avg_at_start', ()))}, "
        f"at end {', '.join(f'{x:.1f}' for x in meta['load_avg_at_end'])}",
    ]
    if meta.get("speed_probe_ms"):
        start, end = meta["speed_probe_ms"]
        lines.append(
            f"Machine speed (`bench/measure.py` speed_probe_ms, a fixed Python loop, lower is faster): "
            f"{start:.0f} ms at start, {end:.0f} ms at end"
        )
    if meta.get("env"):
        lines.append("Service settings: " + ", ".join(f"`{k}={v}`" for k, v in meta["env"].items()))
    if meta.get("note"):
        lines.append(f"Note: {meta['note']}")
    sizes = results[0].get("sizes", {}) if results else {}
    lines += [
        f"Peer idle measures at {sizes.get('peer_idle_connections', '?')} connections "
        "(Flask-SSE holds a Redis connection per client, two sockets per client in its worker).",
        "Node.js: the original's stack (Express + Socket.IO + ioredis + mongoose), two instances; "
        "WebSockets on one, POSTs on the other (throughput: both in turn); idle measures at "
        f"{sizes.get('node_idle_connections', '?')} connections on the one.",
        *([f"Node.js peer not run: {meta['node_skipped']}"] if meta.get("node_skipped") else []),
        'Cells: median over runs (min–max); "—": not measured there. "met?": target met by the '
        "median, and compared with the peers where they were measured (better: than both). "
        "Broadcast: POSTs back to back, all deliveries over the time from the first POST sent to "
        "the last delivery. Loop lag: how late the load generator's worst process woke from a 10 ms "
        "sleep while the latency POSTs ran; above a quarter of the p99, that p99 measures the load "
        "generator, not the service.",
        "",
        "| measure | ours | Flask-SSE | Node.js | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        met = "yes" if row["target_met"] else "**no**"
        if row["better_than_peer"] is False:
            met += f" (**worse than {', '.join(row['worse_than'])}**)"
        elif row["better_than_peer"]:
            met += " (as good as or better than the peers)"
        cells = " | ".join(_cell(row[side]) for side in ("ours", *PEERS))
        lines.append(f"| {row['measure']} | {cells} | {row['target']} | {met} |")
    return "\n".join(lines) + "\n"


def plot(path: Path, results: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, mem) = plt.subplots(1, 2, figsize=(12, 4.5))
    # one colour per series, the same in every run (the legend names each series once)
    colors = {"ours SSE": "tab:blue", "ours WS": "tab:orange", "Flask-SSE": "tab:green", "Node.js": "tab:red"}
    series = [
        ("ours", "latency_sse", "ours SSE"),
        ("ours", "latency_ws", "ours WS"),
        ("peer", "latency_sse", "Flask-SSE"),
        ("node", "latency_ws", "Node.js"),
    ]
    for side, name, label in series:
        samples = sorted(s for r in results for s in (r.get(side, {}).get(name) or {}).get("hist_ms", []))
        if samples:
            ys = [(i + 1) / len(samples) for i in range(len(samples))]
            lat.plot(samples, ys, label=label, color=colors[label])
    lat.set_xscale("log")
    lat.set_xlabel("delivery latency (ms, log)")
    lat.set_ylabel("fraction delivered")
    lat.set_title("latency distribution (CDF)")
    lat.grid(True, which="both", alpha=0.3)
    for side, name, label in [
        ("ours", "idle_sse", "ours SSE"),
        ("ours", "idle_ws", "ours WS"),
        ("peer", "idle_sse", "Flask-SSE"),
        ("node", "idle_ws", "Node.js"),
    ]:
        for i, r in enumerate(results):
            curve = (r.get(side, {}).get(name) or {}).get("curve_mb")
            if curve:
                xs, ys = zip(*[(x, y - curve[0][1]) for x, y in curve], strict=True)
                mem.plot(xs, ys, marker="o", label=label if i == 0 else None, alpha=0.8, color=colors[label])
    mem.set_xlabel("open idle connections (both workers; Node.js: its stream instance)")
    mem.set_ylabel("workers' RSS growth (MB)")
    mem.set_title("memory against connections")
    mem.grid(True, alpha=0.3)
    for ax in (lat, mem):
        if ax.get_legend_handles_labels()[0]:  # a measure skipped draws nothing
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_results(
    prefix: Path, meta: dict[str, Any], results: list[dict[str, Any]], with_plot: bool = True
) -> list[Path]:
    """Write the table, the JSON and (with matplotlib, bench/requirements.txt) the plot."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    rows = summarize(results)
    md, js, png = prefix.with_suffix(".md"), prefix.with_suffix(".json"), prefix.with_suffix(".png")
    md.write_text(markdown(meta, rows, results))
    js.write_text(json.dumps({"meta": meta, "summary": rows, "runs": results}, indent=1, default=str))
    if not with_plot:
        return [md, js]
    plot(png, results)
    return [md, js, png]
