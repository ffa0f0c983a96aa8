"""One benchmark scenario on servers of its own: its Redis and SecantusDB started and
stopped around it, its result written with the command, the time, the speed probe at
both ends and the load, outside git (``bench/report.py``'s ``results_dir``)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.measure import speed_probe_ms  # noqa: E402
from bench.report import results_dir  # noqa: E402
from bench.run import say  # noqa: E402
from tools.devservers import mongo_server, redis_server  # noqa: E402

# (redis url, mongo url, work folder) -> an object with run() -> result and close()
Make = Callable[[str, str, Path], Any]


def run_standalone(name: str, argv: list[str], note: str, make: Make) -> int:
    workdir = ROOT / ".devdata" / "bench"
    workdir.mkdir(parents=True, exist_ok=True)
    rds, mongo = redis_server(), mongo_server()
    rds.start()
    mongo.start()
    started, speed_start = time.time(), speed_probe_ms()
    bench = None
    try:
        bench = make(rds.url, mongo.url, workdir)
        result = bench.run()
    finally:
        if bench is not None:
            bench.close()
        mongo.stop()
        rds.stop()
    result["meta"] = {
        "command": f"bench/{name}.py " + " ".join(argv),
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)),
        "seconds": round(time.time() - started),
        "speed_probe_ms": [speed_start, speed_probe_ms()],
        "load_avg_at_end": os.getloadavg(),
        "note": note,
    }
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(started))}.json"
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    say(f"wrote {path}")
    return 0
