"""The MongoDB calls in flight in this process, and the calls that may take long.

``/readyz`` and ``notify_mongodb_oldest_call_seconds`` (``app/ops/metrics.py``) show the
age of the oldest: seconds there mean the database stalls, whatever the cause (issue 25).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import gevent
import pymongo
from pymongo import monitoring


class _MongoCalls(monitoring.ConnectionPoolListener):
    """The MongoDB calls in flight, each from its connection checkout to its check-in.

    The age of the oldest shows a database that stalls: a ping may still answer while a
    collection is locked (issue 25), and a server that stopped answering keeps new
    connections in their handshake, which no command event covers. pymongo calls
    synchronously, so a greenlet has one call in flight at a time; a killed greenlet
    never checks in, so dead greenlets are forgotten."""

    def __init__(self) -> None:
        self._since: dict[Any, float] = {}

    def connection_check_out_started(self, event: Any) -> None:
        if not _LONG_CALLS.get():
            self._since.setdefault(gevent.getcurrent(), time.monotonic())

    def connection_check_out_failed(self, event: Any) -> None:
        self._since.pop(gevent.getcurrent(), None)

    def connection_checked_in(self, event: Any) -> None:
        self._since.pop(gevent.getcurrent(), None)

    def oldest_call_seconds(self) -> float:
        """How long the oldest call in flight in this process has waited (0 if none)."""
        now = time.monotonic()
        oldest = now
        for greenlet, since in list(self._since.items()):
            if greenlet.dead:
                self._since.pop(greenlet, None)
            else:
                oldest = min(oldest, since)
        return now - oldest

    def _ignored(self, event: Any) -> None:
        """A pool event that says nothing about a call's age."""

    pool_created = pool_ready = pool_cleared = pool_closed = _ignored
    connection_created = connection_ready = connection_closed = connection_checked_out = _ignored


MONGO_CALLS = _MongoCalls()
_LONG_CALLS: ContextVar[bool] = ContextVar("notify_long_mongo_calls", default=False)


@contextmanager
def long_mongo_calls(seconds: float) -> Iterator[None]:
    """MongoDB calls that take long by design (an index build, a retention pass): a
    deadline of their own instead of ``MONGO_OP_TIMEOUT_MS``, and left out of the oldest
    call's age, so that /readyz does not take them for a stall."""
    token = _LONG_CALLS.set(True)
    try:
        with pymongo.timeout(seconds):
            yield
    finally:
        _LONG_CALLS.reset(token)
