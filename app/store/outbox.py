"""The outbox: what follows a publish, and what repairs a publish that never happened.

Each batch the publisher stores carries an outbox marker (a lease and the batch's ids,
``app/store/models.py``), inserted first in the batch's ``insert_many``. After the publish, the
clean-up here removes the markers of many batches with one delete and writes back the few
cursors the publish script replaced. It waits ``OUTBOX_CLEANUP_DELAY_SECONDS`` first, so
that the batches of the next moments share that delete: at a few hundred notifications a
second each batch holds one, and a delete of its own cost the dev database as much CPU as
the insert (bench/README.md). A worker that exits does its clean-up at once (``flush``).

If Redis failed, or the process died between insert and publish, the marker stays, and
the relay (a greenlet in every worker) publishes the batch once its lease has expired,
claiming it first so two instances never race.

That clean-up must keep up, or leases run out on batches that were in fact published and
a relay publishes them again. So it is bounded, the batcher holds new batches while it
lags (``wait_for_room``, for at most one lease), and the relay skips batches whose
clean-up is pending in its worker. A round of clean-up has one deadline
(``MONGO_OP_TIMEOUT_MS``) and names at most ``MAX_IDS_PER_CALL`` markers per delete; one
that MongoDB did not answer stays pending and is tried again, in rounds half as large
(a busy database may need them smaller to answer within the bound at all), growing back
once they succeed.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import pymongo
import redis
from gevent.event import Event
from gevent.event import Event as Wakeup
from pymongo import UpdateOne
from pymongo.errors import PyMongoError

from app.config import Config
from app.ops import metrics
from app.store.inserting import unreachable
from app.store.models import (
    MARKERS,
    MAX_IDS_PER_CALL,
    PUBLIC_PROJECTION,
    id_chunks,
    lease_from_now,
    notifications_collection,
    outbox_due,
)

log = logging.getLogger(__name__)

RELAY_BATCH = MAX_IDS_PER_CALL  # markers (batches) claimed per relay pass: one call by ids
WRITEBACK_BATCH = 1000  # markers cleared / cursors fixed per MongoDB round trip
MIN_WRITEBACK_ROUND = 25  # a round that outlasted the bound is halved, down to this
WRITEBACK_BACKLOG_DOCS = 20000  # pending clean-ups beyond which new batches wait (memory bound)

CLEANUP_RETRY_SECONDS = 0.5  # a clean-up that MongoDB did not answer is tried again after this

Publish = Callable[[list[dict[str, Any]], list[Any]], bool]  # (docs, markers) -> published?


@dataclass
class _Cleanup:
    """After a publish: the batch markers to remove and the cursors that were replaced."""

    queued_at: float
    markers: list[Any]
    fixes: list[tuple[Any, int]]

    @property
    def size(self) -> int:
        return len(self.markers) + len(self.fixes)


class Outbox:
    def __init__(self, config: Config, publish: Publish, stats: dict[str, int]) -> None:
        self.config = config
        self.publish = publish
        self.stats = stats
        self._backlog: deque[_Cleanup] = deque()
        self._pending_markers: set[Any] = set()  # published here, marker not yet removed
        self._pending_size = 0
        self._round_size = WRITEBACK_BATCH  # smaller while rounds outlast MONGO_OP_TIMEOUT_MS
        self._inflight_since: float | None = None
        self._writeback_wakeup = Wakeup()
        self._writeback_progress = Wakeup()
        self.waiting_for_writeback = Event()  # set while the batcher holds a batch back
        self._held, self._held_logged_at = 0.0, 0.0
        self._lag: tuple[float, int] = (0.0, 0)  # the worst (age, pending) seen while holding
        self._relay_wakeup = Wakeup()
        self._flush_now = Wakeup()  # cuts the clean-up delay short (flush)
        self._drained = Wakeup()  # set when the clean-up has emptied its backlog

    # -- clean-up after a publish -------------------------------------------------------
    def published(self, markers: list[Any], fixes: list[tuple[Any, int]], wake: bool) -> None:
        """Queue the clean-up of a published batch; ``wake`` now, or the caller will."""
        cleanup = _Cleanup(time.monotonic(), list(markers), fixes)
        self._backlog.append(cleanup)
        self._pending_markers.update(cleanup.markers)
        self._pending_size += cleanup.size
        if wake:
            self.wake_cleanup()

    def wake_cleanup(self) -> None:
        self._writeback_wakeup.set()

    def _cleanup_age(self) -> float:
        """Seconds since the oldest clean-up not yet done was queued (0 when none is)."""
        oldest = self._inflight_since
        if oldest is None and self._backlog:
            oldest = self._backlog[0].queued_at
        return 0.0 if oldest is None else time.monotonic() - oldest

    def _writeback_lagging(self) -> bool:
        too_old = self._cleanup_age() > self.config.PUBLISH_LEASE_SECONDS / 3
        return too_old or self._pending_size > WRITEBACK_BACKLOG_DOCS

    def wait_for_room(self) -> None:
        """Hold the next batch while the clean-up lags, but never for more than one lease."""
        started = time.monotonic()
        deadline = started + self.config.PUBLISH_LEASE_SECONDS
        while time.monotonic() < deadline:
            self._writeback_progress.clear()  # no yield between this and the check: no lost wake-up
            if not self._writeback_lagging():
                break
            self._note_lag()
            self.waiting_for_writeback.set()
            self._writeback_progress.wait(deadline - time.monotonic())
            self._note_lag()  # the clean-up may still be the one it was
        self.waiting_for_writeback.clear()
        held = time.monotonic() - started
        if held > 0.001:
            metrics.PUBLISH_HELD.inc(held)
            self._held += held
            if started - self._held_logged_at > 10:
                log.warning(
                    "MongoDB is behind: new notifications waited %.3f s in all, while the oldest"
                    " outbox clean-up was up to %.1f s old (%d markers and cursors pending)",
                    self._held,
                    *self._lag,
                )
                self._held, self._held_logged_at, self._lag = 0.0, started, (0.0, 0)

    def _note_lag(self) -> None:
        self._lag = max(self._lag, (self._cleanup_age(), self._pending_size))

    def _take_cleanups(self, limit: int) -> list[_Cleanup]:
        """The oldest clean-ups, at most ``limit`` markers and cursors in all. One that is
        larger alone (a bulk's replaced cursors) gives up the first ``limit`` cursors: its
        marker goes in a later round, after all of them."""
        head = self._backlog[0]
        self._inflight_since = head.queued_at
        if head.size > limit:
            part = _Cleanup(head.queued_at, [], head.fixes[:limit])
            head.fixes = head.fixes[limit:]
            return [part]
        taken: list[_Cleanup] = []
        size = 0
        while self._backlog and size + self._backlog[0].size <= limit:
            cleanup = self._backlog.popleft()
            taken.append(cleanup)
            size += cleanup.size
        return taken

    def _put_back(self, taken: list[_Cleanup]) -> None:
        """Clean-ups MongoDB did not confirm, first again, a split one joined to its rest."""
        for cleanup in reversed(taken):
            head = self._backlog[0] if self._backlog else None
            if head is not None and not cleanup.markers and head.queued_at == cleanup.queued_at:
                head.fixes = cleanup.fixes + head.fixes
            else:
                self._backlog.appendleft(cleanup)
        self._inflight_since = None

    def writeback_loop(self) -> None:
        """Remove markers and record replaced cursors, coalescing batches into bounded writes."""
        while True:
            self._writeback_wakeup.wait()
            if self._pending_size < WRITEBACK_BATCH:  # let the batches of the next moments share the delete
                self._flush_now.wait(self.config.OUTBOX_CLEANUP_DELAY_SECONDS)
            self._writeback_wakeup.clear()
            while self._backlog:
                taken = self._take_cleanups(self._round_size)
                markers = [m for c in taken for m in c.markers]
                try:
                    with pymongo.timeout(self.config.MONGO_OP_TIMEOUT_MS / 1000):  # one bound per round
                        self._record_cleanups(markers, [f for c in taken for f in c.fixes])
                except PyMongoError as exc:
                    if unreachable(exc):  # kept, so the relay does not publish them again meanwhile
                        self._put_back(taken)
                        # A busy database may need smaller rounds to fit the bound at all.
                        self._round_size = max(self._round_size // 2, MIN_WRITEBACK_ROUND)
                        log.warning(
                            "outbox clean-up of %d batches waits for MongoDB (next rounds of %d): %s",
                            len(markers),
                            self._round_size,
                            exc,
                        )
                        gevent.sleep(CLEANUP_RETRY_SECONDS)
                        continue
                    log.error("could not clean up %d batches (relay may repeat them): %s", len(markers), exc)
                else:
                    self._round_size = min(self._round_size * 2, WRITEBACK_BATCH)
                self._pending_markers.difference_update(markers)
                self._pending_size -= sum(c.size for c in taken)
                self._inflight_since = None
                self._writeback_progress.set()
            self._drained.set()

    def flush(self, timeout: float) -> bool:
        """Do the pending clean-up now (a worker about to exit); True if nothing is left.

        A marker left behind would make the relay publish its batch a second time."""
        self._flush_now.set()
        try:
            if not self._settled:
                self._drained.clear()
                self._writeback_wakeup.set()
                self._drained.wait(timeout)
        finally:
            self._flush_now.clear()
        return self._settled

    @property
    def _settled(self) -> bool:
        """No clean-up queued or in flight."""
        return not self._backlog and self._inflight_since is None

    @staticmethod
    def _record_cleanups(markers: list[Any], fixes: list[tuple[Any, int]]) -> None:
        if fixes:  # before the markers go: a marked document is left out of replays meanwhile
            ops = [UpdateOne({"_id": oid}, {"$set": {"seq": seq}}) for oid, seq in fixes]
            notifications_collection().bulk_write(ops, ordered=False)
        for chunk in id_chunks(markers):
            notifications_collection().delete_many({"_id": {"$in": chunk}, **MARKERS})

    @staticmethod
    def release_leases(markers: list[Any]) -> None:
        """Make markers due at once: their publish failed here, the relay should not wait."""
        try:
            for chunk in id_chunks(markers):
                mine = {"_id": {"$in": chunk}, **MARKERS}
                notifications_collection().update_many(mine, {"$set": {"seq": time.time_ns() // 1000}})
        except PyMongoError:
            log.error("could not release publish leases; the relay retries once they expire")

    # -- relay -----------------------------------------------------------------------
    def wake_relay(self) -> None:
        self._relay_wakeup.set()

    def relay_loop(self) -> None:
        while True:
            self._relay_wakeup.wait(self.config.RELAY_INTERVAL_SECONDS)
            self._relay_wakeup.clear()
            try:
                while self.relay_once() == RELAY_BATCH:
                    pass
            except (PyMongoError, redis.RedisError) as exc:
                log.warning("relay pass failed: %s", exc)
            except Exception:
                log.exception("relay pass failed unexpectedly")

    def relay_once(self) -> int:
        """Claim and publish batches whose publish lease expired. Returns how many batches."""
        coll = notifications_collection()
        now_us = time.time_ns() // 1000
        due = outbox_due(now_us)
        found = sorted(m["_id"] for m in coll.find(MARKERS, {"seq": 1}) if m["seq"] < now_us)[:RELAY_BATCH]
        markers = [oid for oid in found if oid not in self._pending_markers]  # published here
        if not markers:
            return 0
        claim = uuid.uuid4().hex
        change = {"$set": {"seq": lease_from_now(self.config), "claim": claim}}
        coll.update_many({**due, "_id": {"$in": markers}}, change)
        claimed = list(coll.find({"_id": {"$in": markers}, **MARKERS, "claim": claim}, {"ids": 1}))
        if not claimed:
            return len(markers)
        claimed_ids = [m["_id"] for m in claimed]
        ids = [oid for m in claimed for oid in m["ids"]]
        docs = [d for chunk in id_chunks(ids) for d in coll.find({"_id": {"$in": chunk}}, PUBLIC_PROJECTION)]
        docs.sort(key=lambda doc: doc["_id"])
        if not docs:  # the process died after the marker, before the batch: nothing to publish
            self._record_cleanups(claimed_ids, [])
            return len(markers)
        if self.publish(docs, claimed_ids):
            self.stats["relayed"] += len(docs)
            metrics.RELAYED.inc(len(docs))
            log.info("relay published %d notifications left unpublished", len(docs))
        else:
            self.release_leases(claimed_ids)
        return len(markers)
