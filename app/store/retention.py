"""Retention: notifications older than ``RETENTION_DAYS`` are deleted by the service itself.

A sweeper greenlet in every worker deletes, about once a minute, every notification whose
``created_at`` is older than the retention. One worker on one instance does each pass (a
Redis lock, held while the pass runs); the others skip it. There is no TTL index: MongoDB's
TTL monitor deletes one document at a time, and the dev server has none. ``RETENTION_DAYS=0``
keeps notifications forever; ``flask db prune --days N`` deletes older ones right away.

Every call of a pass is short, whatever the collection holds. SecantusDB serves no range
on ``_id`` from an index (its ``_id`` index answers point lookups only), so a range there
read every stored notification (26 s at 1,000,000, bench/README.md); it serves a range on
an indexed field from the index, but applies ``limit`` only after it has fetched every
match. So a pass walks the ``created`` index back from the cutoff in time windows sized to
find about ``WINDOW_DOCS`` documents each (a window that found few doubles, one that found
many shrinks to the density it saw), deletes what each finds ``MAX_IDS_PER_CALL`` ids at a
time, rests as long as the window took (the pass takes at most half of the database's
time), and ends at the epoch: no state to keep, and data older than a gap is found too.

What follows from it: history only reaches back ``RETENTION_DAYS``, and so does replay.
A client resuming with a cursor whose notification has expired gets a ``reset`` event
(``app/delivery/replay.py``: the cursor names no event we still keep) and reloads its history.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import gevent
import redis
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from app.ops.mongocalls import long_mongo_calls
from app.store.models import id_chunks, notifications_collection
from app.store.receipts import deliveries_collection

log = logging.getLogger(__name__)

DAY = 86400
SWEEP_SECONDS = 60.0
LOCK_SECONDS = 55  # the pass lock's life, renewed after every window
CALL_SECONDS = 30.0  # one call of a pass: a window finds about WINDOW_DOCS (well under 1 s)
WINDOW_DOCS = 5000  # what one window's find should return
FIRST_WINDOW = timedelta(seconds=2 * SWEEP_SECONDS)  # about what expired since the last pass
MIN_WINDOW = timedelta(milliseconds=1)  # the resolution of a stored date
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def retention_seconds(config: Any) -> int:
    """The retention in seconds for ``config.RETENTION_DAYS`` (0: keep forever; a negative
    value is refused by ``Config.validate``)."""
    return int(config.RETENTION_DAYS) * DAY


def next_window(width: timedelta, found: int) -> timedelta:
    """The next window's width after one of ``width`` found ``found`` documents."""
    if found > WINDOW_DOCS:
        return max(width * (WINDOW_DOCS / found), MIN_WINDOW)
    return width * 2 if found < WINDOW_DOCS // 2 else width


def prune(
    collection: Collection,
    days: float,
    now: datetime | None = None,
    between: Any = gevent.sleep,
    traces: Collection | None = None,
) -> int:
    """Delete notifications created more than ``days`` ago; returns how many.

    ``between(seconds)`` is called after each window with how long the window took; the
    delivery traces in ``traces``, keyed by the notifications' ids, go with them."""
    hi = (now or datetime.now(timezone.utc)) - timedelta(days=days)
    width, deleted = FIRST_WINDOW, 0
    while hi > EPOCH:
        started = time.monotonic()
        lo = max(hi - width, EPOCH)
        window = {"created_at": {"$gte": lo, "$lt": hi}}
        with long_mongo_calls(CALL_SECONDS):  # a window that met dense data may take seconds
            ids = [d["_id"] for d in collection.find(window, {"_id": 1})]
        for chunk in id_chunks(ids):
            deleted += collection.delete_many({"_id": {"$in": chunk}}).deleted_count
            if traces is not None:
                traces.delete_many({"_id": {"$in": chunk}})
        hi, width = lo, next_window(width, len(ids))
        between(time.monotonic() - started)  # a backlog takes half the database's time at most
    return deleted


class Sweeper:
    """One greenlet per worker; a Redis lock lets one worker in the deployment do each pass."""

    def __init__(self, config: Any, redis_client: redis.Redis, lock_key: str) -> None:
        self.seconds = retention_seconds(config)
        self.redis = redis_client
        self.lock_key = lock_key
        self._greenlet: gevent.Greenlet | None = None
        # What else ages with the notifications (``prune(days) -> deleted``), each pass
        # after them: the topic fan-outs (app/topics/__init__.py).
        self.also: list[Callable[[float], int]] = []

    def start(self) -> None:
        if self.seconds and self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _run(self) -> None:
        while True:
            gevent.sleep(SWEEP_SECONDS)
            try:
                self.sweep_once()
            except Exception:  # never let the sweeper die: retention would stop silently
                log.exception("retention sweep failed unexpectedly")

    def sweep_once(self) -> int | None:
        """Delete what expired, if no other worker did this minute; None when skipped."""
        try:
            if not self.redis.set(self.lock_key, "1", nx=True, ex=LOCK_SECONDS):
                return None
        except redis.RedisError:
            return None  # without the lock every worker would sweep: leave it to the next pass
        try:
            traces = deliveries_collection()
            deleted = prune(notifications_collection(), self.seconds / DAY, between=self._rest, traces=traces)
            for other in self.also:
                other(self.seconds / DAY)
        except PyMongoError as exc:
            log.warning("retention sweep failed, retrying in %.0f s: %s", SWEEP_SECONDS, exc)
            return None
        if deleted:
            log.info("retention: deleted %d notifications older than %d days", deleted, self.seconds // DAY)
        return deleted

    def _rest(self, seconds: float) -> None:
        """Between two windows: keep the lock while the pass runs, give the database time."""
        # Should the lock lapse, another worker's pass deletes the same documents, harmlessly.
        with contextlib.suppress(redis.RedisError):
            self.redis.expire(self.lock_key, LOCK_SECONDS)
        gevent.sleep(seconds)
