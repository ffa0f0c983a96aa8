"""Retention: notifications older than ``RETENTION_DAYS`` are deleted by the service itself.

A sweeper greenlet in every worker deletes, about once a minute, every notification whose
``_id`` (an ObjectId: its creation time, the same second as ``created_at``) is older than
the retention, by a range on the primary key. One worker on one instance does each pass
(a Redis lock); the others skip it. There is no TTL index: on the dev server a secondary
index costs each insert about as much as the document itself (``bench/README.md``), and
MongoDB's TTL monitor deletes one document at a time anyway. ``RETENTION_DAYS=0`` keeps
notifications forever; ``flask db prune --days N`` deletes older ones right away.

What follows from it: history only reaches back ``RETENTION_DAYS``, and so does replay.
A client resuming with a cursor whose notification has expired gets a ``reset`` event
(``app/delivery/replay.py``: the cursor names no event we still keep) and reloads its history.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

import gevent
import redis
from bson import ObjectId
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from app.ops.mongocalls import long_mongo_calls
from app.store.models import id_chunks, notifications_collection
from app.store.receipts import deliveries_collection

log = logging.getLogger(__name__)

DAY = 86400
SWEEP_SECONDS = 60.0
# On SecantusDB a find that no secondary index serves (the ``_id`` range here) reads every
# stored notification: 26 s at 1,000,000 (bench/README.md). A pass has its own deadline.
PASS_SECONDS = 300.0
CHUNK = 5000  # documents per pass (deleted MAX_IDS_PER_CALL at a time): a first pass stays interruptible


def retention_seconds(config: Any) -> int:
    """The retention in seconds for ``config.RETENTION_DAYS`` (0: keep forever; a negative
    value is refused by ``Config.validate``)."""
    return int(config.RETENTION_DAYS) * DAY


def cutoff_id(seconds: float, now: datetime | None = None) -> ObjectId:
    """The smallest ObjectId created ``seconds`` ago: everything below it is older."""
    return ObjectId.from_datetime((now or datetime.now(timezone.utc)) - timedelta(seconds=seconds))


def prune(collection: Collection, days: float, now: datetime | None = None) -> int:
    """Delete notifications created more than ``days`` ago; returns how many."""
    below = {"_id": {"$lt": cutoff_id(days * DAY, now)}}
    deleted = 0
    while True:
        ids = [d["_id"] for d in collection.find(below, {"_id": 1}).sort("_id", 1).limit(CHUNK)]
        if not ids:
            return deleted
        for chunk in id_chunks(ids):
            deleted += collection.delete_many({"_id": {"$in": chunk}}).deleted_count
        gevent.sleep(0)  # a long first pass must not starve the worker's streams


class Sweeper:
    """One greenlet per worker; a Redis lock lets one worker in the deployment do each pass."""

    def __init__(self, config: Any, redis_client: redis.Redis, lock_key: str) -> None:
        self.seconds = retention_seconds(config)
        self.redis = redis_client
        self.lock_key = lock_key
        self._greenlet: gevent.Greenlet | None = None

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
            if not self.redis.set(self.lock_key, "1", nx=True, ex=max(int(SWEEP_SECONDS) - 5, 1)):
                return None
        except redis.RedisError:
            return None  # without the lock every worker would sweep: leave it to the next pass
        try:
            with long_mongo_calls(PASS_SECONDS):  # its scan outlasts MONGO_OP_TIMEOUT_MS
                deleted = prune(notifications_collection(), self.seconds / DAY)
                prune(deliveries_collection(), self.seconds / DAY)  # their traces: keyed by the same ids
        except PyMongoError as exc:
            log.warning("retention sweep failed, retrying in %.0f s: %s", SWEEP_SECONDS, exc)
            return None
        if deleted:
            log.info("retention: deleted %d notifications older than %d days", deleted, self.seconds // DAY)
        return deleted
