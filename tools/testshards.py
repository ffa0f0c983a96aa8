"""Run the whole suite as several pytest processes that share one queue of test files.

Most of the suite's time is spent waiting: for gunicorn to start, for a stream to deliver,
for a server to die. Processes that each hold their own Redis and MongoDB-wire server
overlap those waits (tools/shard_plugin.py hands out the files). Each process's report
goes to a log that is printed when all are done, with one line of totals. Tests marked
``solo`` assert timings under load of their own making, so they run last, alone.

    python tools/testshards.py [N] [PYTEST ARGS...]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.shard_plugin import OUTCOMES

DEFAULT_SHARDS = 3


def run_phase(shards: int, args: list[str], totals: dict[str, int]) -> int:
    """One pass over the files ``args`` select, in ``shards`` processes; adds to ``totals``."""
    with tempfile.TemporaryDirectory(prefix="notify-test-queue-") as queue:
        procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        for name in range(1, shards + 1):
            log = Path(queue) / f"shard-{name}.log"
            cmd = [
                sys.executable, "-m", "pytest", "-p", "tools.shard_plugin",
                f"--shard-queue={queue}", f"--shard-name={name}",
                "-o", "console_output_style=classic", *args,
            ]  # fmt: skip
            with log.open("wb") as out:  # the child holds its own copy of the descriptor
                procs.append((subprocess.Popen(cmd, stdout=out), log))
        codes = [proc.wait() for proc, _ in procs]
        for name, (_, log) in enumerate(procs, start=1):
            print(f"\n===== shard {name} (exit {codes[name - 1]}) =====", flush=True)
            sys.stdout.write(log.read_text(errors="replace"))
            result = Path(queue) / f"result-{name}.json"
            if result.exists():
                for key, count in json.loads(result.read_text()).items():
                    totals[key] += count
    # 5: a phase that selected nothing (no test is marked solo), which is no failure
    return next((code for code in codes if code not in (0, 5)), 0)


def run(shards: int, args: list[str]) -> int:
    """The tests marked ``solo`` (they measure time under load) run alone, after the rest."""
    started = time.monotonic()
    totals = dict.fromkeys(OUTCOMES, 0)
    codes = [
        run_phase(shards, ["-m", "not solo", *args], totals),
        run_phase(1, ["-m", "solo", *args], totals),
    ]
    summary = ", ".join(f"{count} {key}" for key, count in totals.items() if count) or "no tests ran"
    seconds = time.monotonic() - started
    print(f"\n===== {summary} in {seconds:.1f}s ({shards} processes, then 1) =====", flush=True)
    return next((code for code in codes if code), 0)


def main(argv: list[str]) -> int:
    shards = DEFAULT_SHARDS
    if argv and argv[0].isdigit():
        shards, argv = max(1, int(argv[0])), argv[1:]
    return run(shards, argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
