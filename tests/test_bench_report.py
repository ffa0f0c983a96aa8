"""bench/report.py: medians over runs, target and peer comparison, and the written files."""

from __future__ import annotations

import json
import subprocess

from bench.report import results_dir, summarize, write_results
from tests.support import ROOT


def run(p50: float, kb: float, peer_kb: float, redis: int) -> dict:
    return {
        "ours": {
            "latency_sse": {
                "p50_ms": p50,
                "lost": 0,
                "duplicates": 0,
                "stray": 0,
                "expected": 10,
                "received": 10,
            },
            "idle_sse": {
                "kb_per_connection": kb,
                "redis_connections_per_worker": {"1": redis, "total_clients": 9},
            },
        },
        "peer": {"idle_sse": {"kb_per_connection": peer_kb, "redis_connections_per_worker": {"2": 3000}}},
    }


def row(rows: list[dict], name: str) -> dict:
    return next(r for r in rows if r["measure"].startswith(name))


def test_summary_takes_medians_and_compares_with_target_and_peer():
    rows = summarize([run(2.0, 11.0, 58.0, 4), run(4.0, 10.0, 60.0, 4), run(2.5, 13.0, 59.0, 4)])
    latency = row(rows, "SSE latency p50")
    assert (
        latency["ours"]["median"] == 2.5 and latency["ours"]["min"] == 2.0 and latency["ours"]["max"] == 4.0
    )
    assert latency["target_met"] and latency["better_than_peer"] is None  # peer not measured there
    memory = row(rows, "memory per idle SSE")
    assert memory["ours"]["median"] == 11.0 and memory["target_met"] and memory["better_than_peer"]
    assert row(rows, "Redis connections per worker")["target_met"]
    assert row(rows, "SSE lost + duplicate")["ours"]["median"] == 0
    assert (
        row(rows, "POST throughput")["ours"]["median"] is None
        and not row(rows, "POST throughput")["target_met"]
    )


def test_write_results_writes_table_and_json_and_no_readme(tmp_path):
    meta = {"command": "dev.py bench --quick", "profile": "quick", "runs": 1, "started_utc": "x",
            "seconds": 1, "cpus": 2, "load_avg_at_end": (0.1, 0.2, 0.3), "note": "shared",
            "speed_probe_ms": [231.4, 402.0]}  # fmt: skip
    readme = tmp_path / "README.md"
    readme.write_text("intro\nold table\n")
    md, js = write_results(tmp_path / "out" / "latest", meta, [run(3.5, 14.0, 50.0, 5)], with_plot=False)
    assert {p.name for p in tmp_path.iterdir()} == {"README.md", "out"}
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"latest.md", "latest.json"}
    table = md.read_text()
    assert "| memory per idle SSE connection (KB RSS) | 14 | 50 | — | ≤ 12 | **no**" in table
    assert "| SSE latency p50 (ms) | 3.5 | — | — | ≤ 3 | **no** |" in table
    assert "Note: shared" in table
    assert "231 ms at start, 402 ms at end" in table  # how fast the machine was, beside the figures
    assert json.loads(js.read_text())["runs"][0]["ours"]["latency_sse"]["p50_ms"] == 3.5
    assert "old table" in readme.read_text()  # the benchmark never edits a README


def node_run(ours_p50: float, node_p50: float, ours_tp: float, node_tp: float) -> dict:
    ws = {"lost": 0, "duplicates": 0, "stray": 0, "expected": 10, "received": 10}
    return {
        "ours": {"latency_ws": {**ws, "p50_ms": ours_p50}, "throughput": {"per_second": ours_tp}},
        "peer": {},
        "node": {
            "latency_ws": {**ws, "p50_ms": node_p50},
            "throughput": {"per_second": node_tp},
            "idle_ws": {"kb_per_connection": 40.0, "per_worker": {"1": {"connections": 200}}},
        },
    }


def test_node_columns_beside_ours_and_flask_sse(tmp_path):
    rows = summarize([node_run(2.0, 6.0, 3000.0, 1500.0), node_run(2.2, 5.0, 2500.0, 2800.0)])
    latency = row(rows, "WS latency p50")
    assert latency["node"]["median"] == 5.5 and latency["peer"]["median"] is None
    assert latency["better_than_peer"] and latency["worse_than"] == []
    throughput = row(rows, "POST throughput")
    assert throughput["better_than_peer"] and throughput["node"]["runs"] == [1500.0, 2800.0]
    assert row(rows, "memory per idle WS")["node"]["median"] == 40.0
    # not a row it shares: one instance holds its streams, it has no "less loaded worker"
    assert row(rows, "idle WS connections on the less loaded")["node"]["median"] is None
    meta = {"command": "dev.py bench", "profile": "quick", "runs": 1, "started_utc": "x", "seconds": 1,
            "cpus": 2, "load_avg_at_end": (0.1, 0.2, 0.3)}  # fmt: skip
    (md,) = write_results(tmp_path / "latest", meta, [node_run(2.0, 6.0, 1000.0, 1500.0)], with_plot=False)[
        :1
    ]
    table = md.read_text()
    assert "| measure | ours | Flask-SSE | Node.js | target | met? |" in table
    assert "| WS latency p50 (ms) | 2 | — | 6 | ≤ 3 | yes (as good as or better than the peers) |" in table
    assert "| POST throughput, 32 keep-alive clients (/s) | 1,000 | — | 1,500 | ≥ 2,000 | **no** " in table
    assert "(**worse than Node.js**)" in table
    assert "| SSE latency p50 (ms) | — | — | — |" in table


def test_results_go_outside_git(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_BENCH_OUT", raising=False)
    default = results_dir()
    assert default == ROOT / ".bench-results"
    for written in (default / "latest.md", default / "tmp" / "profile-x.txt"):
        ignored = subprocess.run(["git", "check-ignore", "-q", str(written)], cwd=ROOT, check=False)
        assert ignored.returncode == 0, f"git does not ignore {written}"
    monkeypatch.setenv("NOTIFY_BENCH_OUT", str(tmp_path / "runs"))
    assert results_dir() == tmp_path / "runs"


def test_loop_lag_beside_each_latency_judged_against_a_quarter_of_its_p99(tmp_path):
    ws = {"lost": 0, "duplicates": 0, "stray": 0, "expected": 10, "received": 10}
    runs = [
        {
            "ours": {
                "latency_sse": {**ws, "p99_ms": 8.0, "loadgen_lag_p99_ms": 1.5},
                "latency_ws": {**ws, "p99_ms": 8.0, "loadgen_lag_p99_ms": 3.0},
            },
            "node": {"latency_ws": {**ws, "p99_ms": 20.0, "loadgen_lag_p99_ms": 4.0}},
        }
    ]
    rows = summarize(runs)
    assert row(rows, "SSE: load generator's loop lag")["target_met"]  # 1.5 ≤ 8 / 4
    ws_lag = row(rows, "WS: load generator's loop lag")
    assert not ws_lag["target_met"] and ws_lag["better_than_peer"] is None  # 3.0 > 8 / 4
    assert ws_lag["node"]["median"] == 4.0
    meta = {"command": "dev.py bench", "profile": "quick", "runs": 1, "started_utc": "x", "seconds": 1,
            "cpus": 2, "load_avg_at_end": (0.1, 0.2, 0.3)}  # fmt: skip
    table = write_results(tmp_path / "latest", meta, runs, with_plot=False)[0].read_text()
    lines = table.splitlines()
    p99 = next(i for i, line in enumerate(lines) if line.startswith("| WS latency p99 (ms) | 8 | — | 20 |"))
    assert (
        lines[p99 + 1] == "| WS: load generator's loop lag p99 (ms) | 3 | — | 4 | ≤ ¼ of the p99 | **no** |"
    )
