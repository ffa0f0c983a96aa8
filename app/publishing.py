"""Storing and publishing notifications: the write path and its outbox relay.

Concurrent POSTs in a worker are coalesced: a single batcher greenlet takes everything
queued while the previous write was in flight, gives each notification a proposed cursor
(no round trip), stores them with one ``insert_many`` and publishes them with one Lua call
(PUBLISH, replay and recent lists, cache invalidation). A request waits only for its own
batch, so nothing waits at low load.

Every document is written once, with its cursor: the script keeps the proposed one unless
another worker already published a later one for that user (then it publishes a fresh
one, written back to MongoDB after the publish). Each batch has an outbox marker (a lease
and the batch's ids, ``app/models.py``), inserted first in the batch's ``insert_many``, so
it exists whenever any document of the batch does, at no round trip of its own. After the
publish, one delete for many batches removes their markers. If Redis fails, or the
process dies between insert and publish, the marker stays, and a relay greenlet in every
worker publishes the batch once its lease has expired, claiming it first so two instances
never race.

That marker clean-up must keep up, or leases run out on batches that were in fact
published and a relay publishes them again: so it is bounded, the batcher holds new
batches while it lags (for at most one lease), and the relay skips batches whose clean-up
is pending in its worker.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import gevent
import orjson
import redis
from gevent.event import AsyncResult, Event
from gevent.event import Event as Wakeup
from gevent.queue import Queue
from pymongo import UpdateOne
from pymongo.errors import PyMongoError

from . import lua, metrics
from .config import Config
from .models import OUTBOX_USER, PUBLIC_PROJECTION, notifications_collection, outbox_due, outbox_marker
from .serialization import public_json

log = logging.getLogger(__name__)

MAX_BATCH_DOCS = 5000
RELAY_BATCH = 200  # markers (batches) claimed per relay pass
WRITEBACK_BATCH = 1000  # markers cleared / cursors fixed per MongoDB round trip
WRITEBACK_BACKLOG_DOCS = 20000  # pending clean-ups beyond which new batches wait (memory bound)
MAX_CLOCK_AHEAD_US = 1_000_000  # a proposed cursor further ahead of Redis time is replaced


class StoreUnavailable(RuntimeError):
    """MongoDB did not store the notifications: nothing was published."""


@dataclass
class _Job:
    docs: list[dict[str, Any]]
    result: AsyncResult = field(default_factory=AsyncResult)


@dataclass
class Stored:
    """What a request gets back: its notifications, and whether they were pushed live."""

    notifications: list[dict[str, Any]]
    published: bool


@dataclass
class _Cleanup:
    """After a publish: the batch markers to remove and the cursors that were replaced."""

    queued_at: float
    markers: list[Any]
    fixes: list[tuple[Any, int]]

    @property
    def size(self) -> int:
        return len(self.markers) + len(self.fixes)


class Publisher:
    def __init__(self, config: Config, redis_client: redis.Redis) -> None:
        self.config = config
        self.redis = redis_client
        self.prefix = config.KEY_PREFIX
        self._last_proposed = 0
        self._script = redis_client.register_script(lua.PUBLISH)
        self._jobs: Queue = Queue()
        self._backlog: deque[_Cleanup] = deque()
        self._pending_markers: set[Any] = set()  # published here, marker not yet removed
        self._pending_size = 0
        self._inflight_since: float | None = None
        self._writeback_wakeup = Wakeup()
        self._writeback_progress = Wakeup()
        self.waiting_for_writeback = Event()  # set while the batcher holds a batch back
        self._held, self._held_logged_at = 0.0, 0.0
        self._relay_wakeup = Wakeup()
        self._greenlets: list[gevent.Greenlet] = []
        self.stats = {"batches": 0, "stored": 0, "published": 0, "relayed": 0, "resequenced": 0}

    # -- lifecycle -------------------------------------------------------------------
    def start(self, relay: bool = True) -> None:
        if self._greenlets:
            return
        self._greenlets = [gevent.spawn(self._batch_loop), gevent.spawn(self._writeback_loop)]
        if relay:
            self._greenlets.append(gevent.spawn(self._relay_loop))

    def stop(self) -> None:
        gevent.killall(self._greenlets, block=False)
        self._greenlets = []

    def wake_relay(self) -> None:
        self._relay_wakeup.set()

    # -- write path ------------------------------------------------------------------
    def store(self, docs: list[dict[str, Any]]) -> Stored:
        """Store ``docs`` (raw MongoDB documents) and publish them; blocks this greenlet."""
        self.start()
        job = _Job(docs)
        self._jobs.put(job)
        return job.result.get()

    def _batch_loop(self) -> None:
        while True:
            jobs = [self._jobs.get()]
            self._wait_for_writeback_room()
            count = len(jobs[0].docs)
            while count < MAX_BATCH_DOCS and not self._jobs.empty():
                job = self._jobs.get_nowait()
                jobs.append(job)
                count += len(job.docs)
            try:
                self._process(jobs)
            except Exception as exc:  # never let the batcher die
                log.exception("batch failed unexpectedly")
                for job in jobs:
                    if not job.result.ready():
                        job.result.set_exception(StoreUnavailable(str(exc)))

    def _process(self, jobs: list[_Job]) -> None:
        docs = [doc for job in jobs for doc in job.docs]
        self.propose_cursors(docs)
        ids = [d["_id"] for d in docs]
        marker = outbox_marker(ids, self._lease_from_now())  # the lease from now, not from the queueing
        if not self._insert(jobs, docs, marker):
            return
        self.stats["batches"] += 1
        if self.config.TEST_CRASH_AFTER_INSERT and not self.config.is_production:
            log.warning("TEST_CRASH_AFTER_INSERT set: exiting between insert and publish")
            os._exit(70)
        published = self.publish(docs, [marker["_id"]], wake_cleanup=False)
        if not published:
            self._release_leases([marker["_id"]])
        for job in jobs:
            body = [public_json(d) for d in job.docs]
            if not published:  # the relay will publish it, possibly with another cursor
                for notification in body:
                    notification["seq"] = None
            job.result.set(Stored(body, published))
        if published:  # after the results: the waiting requests answer before the clean-up runs
            self._writeback_wakeup.set()

    def propose_cursors(self, docs: list[dict[str, Any]]) -> None:
        """Cursors increasing within this worker and close to every other worker's clock."""
        last = self._last_proposed
        now_us = time.time_ns() // 1000
        for doc in docs:
            last = max(last + 1, now_us)
            doc["seq"] = last
        self._last_proposed = last

    def _lease_from_now(self) -> int:
        return time.time_ns() // 1000 + int(self.config.PUBLISH_LEASE_SECONDS * 1_000_000)

    def _insert(self, jobs: list[_Job], docs: list[dict[str, Any]], marker: dict[str, Any]) -> bool:
        """Insert the marker and then the batch, in order, in one round trip.

        All or nothing: on failure every job fails and whatever part was stored is removed."""
        try:
            notifications_collection().insert_many([marker, *docs], ordered=True)
        except PyMongoError as exc:
            log.error("MongoDB insert failed: %s", exc)
            self._forget(marker)
            for job in jobs:
                job.result.set_exception(StoreUnavailable("MongoDB did not store the notification"))
            return False
        self.stats["stored"] += len(docs)
        metrics.CREATED.inc(len(docs))
        return True

    @staticmethod
    def _forget(marker: dict[str, Any]) -> None:
        """Nothing half-written: remove whatever part of a failed batch was stored.

        The marker goes last: if this fails, the relay publishes what is left, late."""
        coll = notifications_collection()
        try:
            coll.delete_many({"_id": {"$in": marker["ids"]}})
            coll.delete_one({"_id": marker["_id"], "user_id": OUTBOX_USER})
        except PyMongoError:
            log.error("could not remove up to %d partly stored notifications", len(marker["ids"]))

    # -- publish ---------------------------------------------------------------------
    def publish(self, docs: list[dict[str, Any]], markers: list[Any], wake_cleanup: bool = True) -> bool:
        """One Lua call for all ``docs``, in order; then ``markers`` are cleaned up (queued;
        the clean-up greenlet is woken unless ``wake_cleanup`` is False: the caller will).

        Sets ``doc["seq"]`` to the cursor published (a replaced one is written back to
        MongoDB). False if Redis failed: nothing is cleaned up and the relay retries.
        """
        if not docs:
            return True
        args: list[Any] = [
            self.prefix,
            self.config.RECENT_LIMIT,
            self.config.REPLAY_BUFFER_SIZE,
            self.config.REPLAY_BUFFER_TTL_SECONDS,
            int(self.config.PUBLISH_LEASE_SECONDS * 1_000_000),
            MAX_CLOCK_AHEAD_US,
        ]
        for doc in docs:
            body = public_json(doc)
            del body["seq"]  # the script puts the cursor it publishes in front
            args.append(doc["user_id"])
            args.append("" if doc.get("seq") is None else doc["seq"])
            args.append(orjson.dumps(body))
        try:
            seqs = self._script(args=args)
        except redis.RedisError as exc:
            metrics.redis_error("publish")
            log.warning("publish of %d notifications failed, relay will retry: %s", len(docs), exc)
            return False
        fixes = []
        for doc, raw in zip(docs, seqs, strict=True):
            seq = int(raw)
            if seq != doc.get("seq"):
                fixes.append((doc["_id"], seq))
                doc["seq"] = seq
        if fixes:
            self.stats["resequenced"] += len(fixes)
            metrics.RESEQUENCED.inc(len(fixes))
        cleanup = _Cleanup(time.monotonic(), list(markers), fixes)
        self._backlog.append(cleanup)
        self._pending_markers.update(cleanup.markers)
        self._pending_size += cleanup.size
        if wake_cleanup:
            self._writeback_wakeup.set()
        self.stats["published"] += len(docs)
        metrics.PUBLISHED.inc(len(docs))
        return True

    def _release_leases(self, markers: list[Any]) -> None:
        mine = {"_id": {"$in": markers}, "user_id": OUTBOX_USER}
        try:
            notifications_collection().update_many(mine, {"$set": {"seq": time.time_ns() // 1000}})
        except PyMongoError:
            log.error("could not release publish leases; the relay retries once they expire")

    # -- clean-up after a publish -------------------------------------------------------
    def _writeback_lagging(self) -> bool:
        oldest = self._inflight_since
        if oldest is None and self._backlog:
            oldest = self._backlog[0].queued_at
        too_old = oldest is not None and time.monotonic() - oldest > self.config.PUBLISH_LEASE_SECONDS / 3
        return too_old or self._pending_size > WRITEBACK_BACKLOG_DOCS

    def _wait_for_writeback_room(self) -> None:
        """Hold the next batch while the clean-up lags, but never for more than one lease."""
        started = time.monotonic()
        deadline = started + self.config.PUBLISH_LEASE_SECONDS
        while time.monotonic() < deadline:
            self._writeback_progress.clear()  # no yield between this and the check: no lost wake-up
            if not self._writeback_lagging():
                break
            self.waiting_for_writeback.set()
            self._writeback_progress.wait(deadline - time.monotonic())
        self.waiting_for_writeback.clear()
        held = time.monotonic() - started
        if held > 0.001:
            metrics.PUBLISH_HELD.inc(held)
            self._held += held
            if started - self._held_logged_at > 10:
                log.warning(
                    "MongoDB is behind: new notifications waited %.2f s in all for %d outbox clean-ups",
                    self._held,
                    self._pending_size,
                )
                self._held, self._held_logged_at = 0.0, started

    def _take_cleanups(self) -> list[_Cleanup]:
        taken: list[_Cleanup] = []
        size = 0
        while self._backlog and (not taken or size + self._backlog[0].size <= WRITEBACK_BATCH):
            cleanup = self._backlog.popleft()
            if not taken:
                self._inflight_since = cleanup.queued_at
            taken.append(cleanup)
            size += cleanup.size
        return taken

    def _writeback_loop(self) -> None:
        """Remove markers and record replaced cursors, coalescing batches into bounded writes."""
        while True:
            self._writeback_wakeup.wait()
            self._writeback_wakeup.clear()
            while self._backlog:
                taken = self._take_cleanups()
                markers = [m for c in taken for m in c.markers]
                try:
                    self._record_cleanups(markers, [f for c in taken for f in c.fixes])
                except PyMongoError as exc:
                    log.error("could not clean up %d batches (relay may repeat them): %s", len(markers), exc)
                finally:
                    self._pending_markers.difference_update(markers)
                    self._pending_size -= sum(c.size for c in taken)
                    self._inflight_since = None
                    self._writeback_progress.set()

    @staticmethod
    def _record_cleanups(markers: list[Any], fixes: list[tuple[Any, int]]) -> None:
        if fixes:  # before the markers go: a marked document is left out of replays meanwhile
            ops = [UpdateOne({"_id": oid}, {"$set": {"seq": seq}}) for oid, seq in fixes]
            notifications_collection().bulk_write(ops, ordered=False)
        if markers:
            notifications_collection().delete_many({"_id": {"$in": markers}, "user_id": OUTBOX_USER})

    # -- relay -----------------------------------------------------------------------
    def _relay_loop(self) -> None:
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
        due = outbox_due(time.time_ns() // 1000)
        found = [d["_id"] for d in coll.find(due, {"_id": 1}).sort("_id", 1).limit(RELAY_BATCH)]
        markers = [oid for oid in found if oid not in self._pending_markers]  # published here
        if not markers:
            return 0
        claim = uuid.uuid4().hex
        change = {"$set": {"seq": self._lease_from_now(), "claim": claim}}
        coll.update_many({**due, "_id": {"$in": markers}}, change)
        claimed = list(
            coll.find({"_id": {"$in": markers}, "user_id": OUTBOX_USER, "claim": claim}, {"ids": 1})
        )
        if not claimed:
            return len(markers)
        claimed_ids = [m["_id"] for m in claimed]
        ids = [oid for m in claimed for oid in m["ids"]]
        docs = list(coll.find({"_id": {"$in": ids}}, PUBLIC_PROJECTION).sort("_id", 1))
        if not docs:  # the process died after the marker, before the batch: nothing to publish
            self._record_cleanups(claimed_ids, [])
            return len(markers)
        if self.publish(docs, claimed_ids):
            self.stats["relayed"] += len(docs)
            metrics.RELAYED.inc(len(docs))
            log.info("relay published %d notifications left unpublished", len(docs))
        else:
            self._release_leases(claimed_ids)
        return len(markers)
