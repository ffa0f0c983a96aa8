"""pytest plugin: several pytest processes share one suite, taking test files from a queue.

Loaded by ``tools/testshards.py`` (``-p tools.shard_plugin --shard-queue DIR``). Every
process collects the whole suite in the same order; before it runs a file it claims it by
creating ``DIR/<n>`` exclusively, so each file runs in exactly one process and a process
that finishes early takes the next file instead of idling. Files are offered costliest
first (tests that start gunicorn or servers of their own count more), the longest-task-
first rule that keeps the processes finishing together.

A process's session fixtures (its Redis and MongoDB-wire server) are its own, and the
next file is claimed before the current file's last test runs, so pytest tears down only
what that file alone used. Here xdist is no option: its workers talk over execnet
threads, which the suite's gevent monkey patching stops.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# Rough seconds per test by what it starts; only the order of files depends on it.
HEAVY_FIXTURES = {"live": 1.5, "own_redis": 0.5, "own_mongo": 1.5, "page": 1.0}
BASE_COST = 0.1
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("shards")
    group.addoption("--shard-queue", default=None, help="directory shared by the processes of one run")
    group.addoption("--shard-name", default="1", help="this process's name in progress lines")


def cost(item: pytest.Item) -> float:
    names = getattr(item, "fixturenames", ())
    return BASE_COST + sum(weight for name, weight in HEAVY_FIXTURES.items() if name in names)


def files_by_cost(items: list[pytest.Item]) -> list[list[pytest.Item]]:
    """The collected items grouped by file (collection order kept inside), costliest first."""
    groups: dict[str, list[pytest.Item]] = {}
    for item in items:
        groups.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    return sorted(groups.values(), key=lambda group: -sum(cost(item) for item in group))


class Queue:
    """The files not yet claimed by any process of the run."""

    def __init__(self, directory: Path, groups: list[list[pytest.Item]]) -> None:
        self.directory = directory
        self.pending = list(enumerate(groups))

    def claim(self) -> list[pytest.Item] | None:
        while self.pending:
            index, group = self.pending.pop(0)
            try:
                os.close(os.open(self.directory / str(index), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            return group
        return None


def claimed(queue: Queue) -> Iterator[tuple[pytest.Item, pytest.Item | None]]:
    """Each test with the one that follows it in this process (``None`` at the end)."""
    current = queue.claim()
    while current is not None:
        following: list[pytest.Item] | None = None
        for position, item in enumerate(current):
            if position + 1 < len(current):
                yield item, current[position + 1]
            else:
                following = queue.claim()
                yield item, following[0] if following else None
        current = following


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool | None:
    directory = session.config.getoption("shard_queue")
    if directory is None or session.config.option.collectonly:
        return None
    if session.testsfailed and not session.config.option.continue_on_collection_errors:
        raise session.Interrupted(f"{session.testsfailed} errors during collection")
    name = session.config.getoption("shard_name")
    queue = Queue(Path(directory), files_by_cost(session.items))
    started: dict[str, float] = {}
    for item, nextitem in claimed(queue):
        path = item.nodeid.split("::", 1)[0]
        if path not in started:
            started[path] = time.monotonic()
            print(f"[shard {name}] {path}", file=sys.stderr, flush=True)
        item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
        if session.shouldfail:
            raise session.Failed(session.shouldfail)
        if session.shouldstop:
            raise session.Interrupted(session.shouldstop)
    return True


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Leave this process's outcome counts for the runner to add up."""
    directory = session.config.getoption("shard_queue")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if directory is None or reporter is None:
        return
    counts = {key: len(reporter.stats.get(key, [])) for key in OUTCOMES}
    name = session.config.getoption("shard_name")
    (Path(directory) / f"result-{name}.json").write_text(json.dumps(counts))
