"""The parallel test runner (tools/testshards.py + tools/shard_plugin.py) on a suite of its own:
every test runs exactly once, in processes that really overlap, and failures are not lost."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The first test of a.py waits until b.py has begun, which only another process can do:
# one process runs a file's tests in order and has not claimed b.py before a.py's last one.
WAITER = """
import os, time
from pathlib import Path

LOG = Path(os.environ["SHARD_LOG"])

def note(name):
    with LOG.open("a") as log:
        log.write(f"{name} {os.getpid()}\\n")

def test_first():
    note("a.first")
    deadline = time.monotonic() + 30
    while "b.first" not in LOG.read_text():
        assert time.monotonic() < deadline, "b.py never ran beside a.py"
        time.sleep(0.05)

def test_second():
    note("a.second")
"""
SIMPLE = """
import os
from pathlib import Path

def note(name):
    with Path(os.environ["SHARD_LOG"]).open("a") as log:
        log.write(f"{name} {os.getpid()}\\n")

def test_first():
    note("{tag}.first")

def test_second():
    note("{tag}.second")
    assert {ok}
"""


Ran = tuple[subprocess.CompletedProcess[str], list[list[str]]]


def run_suite(tmp_path: Path, files: dict[str, str]) -> Ran:
    suite = tmp_path / "suite"
    suite.mkdir()
    for name, text in files.items():
        (suite / name).write_text(text)
    log = tmp_path / "ran.log"
    log.touch()
    done = subprocess.run(
        [sys.executable, "-m", "tools.testshards", "2", "-p", "no:cacheprovider", str(suite)],
        cwd=ROOT,
        env={**os.environ, "SHARD_LOG": str(log)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done, [line.split() for line in log.read_text().splitlines()]


def simple(tag: str, ok: bool = True) -> str:
    return SIMPLE.replace("{tag}", tag).replace("{ok}", str(ok))


def test_every_test_runs_once_across_overlapping_processes(tmp_path: Path) -> None:
    files = {"test_a.py": WAITER, **{f"test_{tag}.py": simple(tag) for tag in "bcd"}}
    done, ran = run_suite(tmp_path, files)
    assert done.returncode == 0, done.stdout + done.stderr
    names = sorted(name for name, _ in ran)
    assert names == sorted(f"{tag}.{which}" for tag in "abcd" for which in ("first", "second"))
    pids = {name: pid for name, pid in ran}
    assert pids["a.first"] != pids["b.first"]
    assert pids["a.first"] == pids["a.second"], "a file's tests stay in one process"
    assert "8 passed" in done.stdout.splitlines()[-1]


def test_a_failure_in_one_process_fails_the_run(tmp_path: Path) -> None:
    done, ran = run_suite(tmp_path, {"test_ok.py": simple("ok"), "test_bad.py": simple("bad", ok=False)})
    assert done.returncode == 1
    assert len(ran) == 4
    assert "1 failed" in done.stdout.splitlines()[-1]
    assert "3 passed" in done.stdout.splitlines()[-1]
    assert "test_bad.py::test_second" in done.stdout
