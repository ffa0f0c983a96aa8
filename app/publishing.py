"""Storing and publishing notifications: the write path and its outbox relay.

Concurrent POSTs in a worker are coalesced: a single batcher greenlet takes everything
queued while the previous write was in flight, stores it with one ``insert_many`` and
publishes it with one Lua call (cursor, PUBLISH, recent list, cache invalidation). A
request waits only for its own batch, so nothing waits at low load.

Documents are inserted ``published: False`` with a short lease (taken at insert time)
held by the inserting worker. The lease is released if Redis fails, and a relay greenlet
in every worker publishes whatever is left unpublished once its lease has expired (a crash
between insert and publish, Redis down), claiming documents first so two instances never race.

After a publish the assigned cursors are written back to MongoDB in bulk. That write-back
must keep up, or leases run out on documents that were in fact published and a relay
publishes them again: so it is bounded, the batcher holds new batches while it lags (for
at most one lease), and the relay skips documents whose write-back is pending in its worker.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import gevent
import orjson
import redis
from gevent.event import AsyncResult, Event
from gevent.event import Event as Wakeup
from gevent.queue import Queue
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError, PyMongoError

from . import lua, metrics
from .config import Config
from .models import notifications_collection
from .serialization import public_json

log = logging.getLogger(__name__)

MAX_BATCH_DOCS = 5000
RELAY_BATCH = 500
WRITEBACK_BATCH = 1000  # cursors recorded per bulk write
WRITEBACK_BACKLOG_DOCS = 20000  # unrecorded cursors beyond which new batches wait (memory bound)


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


class Publisher:
    def __init__(self, config: Config, redis_client: redis.Redis) -> None:
        self.config = config
        self.redis = redis_client
        self.prefix = config.KEY_PREFIX
        self._script = redis_client.register_script(lua.PUBLISH)
        self._jobs: Queue = Queue()
        self._backlog: deque[tuple[float, list[tuple[Any, int]]]] = deque()
        self._unrecorded: set[Any] = set()
        self._inflight_since: float | None = None
        self._writeback_wakeup = Wakeup()
        self._writeback_progress = Wakeup()
        self.waiting_for_writeback = Event()  # set while the batcher holds a batch back
        self._held, self._held_logged_at = 0.0, 0.0
        self._relay_wakeup = Wakeup()
        self._greenlets: list[gevent.Greenlet] = []
        self.stats = {"batches": 0, "stored": 0, "published": 0, "relayed": 0}

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
        stored_jobs = self._insert(jobs)
        self.stats["batches"] += 1
        if not stored_jobs:
            return
        if self.config.TEST_CRASH_AFTER_INSERT and not self.config.is_production:
            log.warning("TEST_CRASH_AFTER_INSERT set: exiting between insert and publish")
            os._exit(70)
        docs = [doc for job in stored_jobs for doc in job.docs]
        published = self.publish(docs)
        if not published:
            self._release_leases(docs)
        for job in stored_jobs:
            job.result.set(Stored([public_json(d) for d in job.docs], published))

    def _insert(self, jobs: list[_Job]) -> list[_Job]:
        docs = [doc for job in jobs for doc in job.docs]
        lease = datetime.now(timezone.utc) + timedelta(seconds=self.config.PUBLISH_LEASE_SECONDS)
        for doc in docs:  # from now, not from when the request queued
            doc["lease_until"] = lease
        failed: set[Any] = set()
        try:
            notifications_collection().insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            failed = {docs[err["index"]]["_id"] for err in exc.details.get("writeErrors", [])}
            if not failed:
                failed = {d["_id"] for d in docs}
        except PyMongoError as exc:
            log.error("MongoDB insert failed: %s", exc)
            failed = {d["_id"] for d in docs}
        stored = []
        for job in jobs:
            if any(doc["_id"] in failed for doc in job.docs):
                self._forget([d["_id"] for d in job.docs if d["_id"] not in failed])
                job.result.set_exception(StoreUnavailable("MongoDB did not store the notification"))
            else:
                stored.append(job)
        self.stats["stored"] += sum(len(job.docs) for job in stored)
        metrics.CREATED.inc(sum(len(job.docs) for job in stored))
        return stored

    @staticmethod
    def _forget(ids: list[Any]) -> None:
        """Nothing half-written: remove the stored part of a request that failed."""
        if ids:
            try:
                notifications_collection().delete_many({"_id": {"$in": ids}})
            except PyMongoError:
                log.error("could not remove %d partly stored notifications", len(ids))

    # -- publish ---------------------------------------------------------------------
    def publish(self, docs: list[dict[str, Any]]) -> bool:
        """One Lua call for all ``docs``; sets ``doc["seq"]``. False if Redis failed."""
        if not docs:
            return True
        args: list[Any] = [
            self.prefix,
            self.config.RECENT_LIMIT,
            self.config.REPLAY_BUFFER_SIZE,
            self.config.REPLAY_BUFFER_TTL_SECONDS,
        ]
        for doc in docs:
            body = public_json(doc)
            del body["seq"]  # the script puts the cursor it assigns in front
            args.append(doc["user_id"])
            args.append(orjson.dumps(body))
        try:
            seqs = self._script(args=args)
        except redis.RedisError as exc:
            metrics.redis_error("publish")
            log.warning("publish of %d notifications failed, relay will retry: %s", len(docs), exc)
            return False
        for doc, seq in zip(docs, seqs, strict=True):
            doc["seq"] = int(seq)
            doc["published"] = True
        self._backlog.append((time.monotonic(), [(doc["_id"], doc["seq"]) for doc in docs]))
        self._unrecorded.update(doc["_id"] for doc in docs)
        self._writeback_wakeup.set()
        self.stats["published"] += len(docs)
        metrics.PUBLISHED.inc(len(docs))
        return True

    def _release_leases(self, docs: list[dict[str, Any]]) -> None:
        now = datetime.now(timezone.utc)
        try:
            notifications_collection().update_many(
                {"_id": {"$in": [d["_id"] for d in docs]}, "published": False},
                {"$set": {"lease_until": now}},
            )
        except PyMongoError:
            log.error("could not release publish leases; the relay retries once they expire")

    # -- cursor write-back ------------------------------------------------------------
    def _writeback_lagging(self) -> bool:
        oldest = self._inflight_since
        if oldest is None and self._backlog:
            oldest = self._backlog[0][0]
        too_old = oldest is not None and time.monotonic() - oldest > self.config.PUBLISH_LEASE_SECONDS / 3
        return too_old or len(self._unrecorded) > WRITEBACK_BACKLOG_DOCS

    def _wait_for_writeback_room(self) -> None:
        """Hold the next batch while the write-back lags, but never for more than one lease."""
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
                    "MongoDB is behind: new notifications waited %.2f s in all for %d cursor write-backs",
                    self._held,
                    len(self._unrecorded),
                )
                self._held, self._held_logged_at = 0.0, started

    def _take_writebacks(self) -> list[tuple[Any, int]]:
        pairs: list[tuple[Any, int]] = []
        while self._backlog and len(pairs) < WRITEBACK_BATCH:
            queued_at, chunk = self._backlog.popleft()
            room = WRITEBACK_BATCH - len(pairs)
            if len(chunk) > room:
                self._backlog.appendleft((queued_at, chunk[room:]))
                chunk = chunk[:room]
            if not pairs:
                self._inflight_since = queued_at
            pairs.extend(chunk)
        return pairs

    def _writeback_loop(self) -> None:
        """Record cursors in MongoDB, coalescing concurrent batches into bounded bulk writes."""
        while True:
            self._writeback_wakeup.wait()
            self._writeback_wakeup.clear()
            while self._backlog:
                pairs = self._take_writebacks()
                try:
                    self._record_cursors(pairs)
                except PyMongoError as exc:
                    log.error("could not record %d cursors (relay may publish again): %s", len(pairs), exc)
                finally:
                    self._unrecorded.difference_update(oid for oid, _ in pairs)
                    self._inflight_since = None
                    self._writeback_progress.set()

    @staticmethod
    def _record_cursors(pairs: list[tuple[Any, int]]) -> None:
        ops = [
            UpdateOne(
                {"_id": oid},
                {"$set": {"seq": seq, "published": True}, "$unset": {"lease_until": "", "claim": ""}},
            )
            for oid, seq in pairs
        ]
        notifications_collection().bulk_write(ops, ordered=False)

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
        """Claim and publish notifications whose publish lease expired. Returns how many."""
        coll = notifications_collection()
        now = datetime.now(timezone.utc)
        due = {"published": False, "lease_until": {"$lt": now}}
        found = [d["_id"] for d in coll.find(due, {"_id": 1}).sort("_id", 1).limit(RELAY_BATCH)]
        ids = [oid for oid in found if oid not in self._unrecorded]  # published here, cursor pending
        if not ids:
            return 0
        claim = uuid.uuid4().hex
        lease = now + timedelta(seconds=self.config.PUBLISH_LEASE_SECONDS)
        coll.update_many({**due, "_id": {"$in": ids}}, {"$set": {"lease_until": lease, "claim": claim}})
        docs = list(coll.find({"claim": claim, "published": False}).sort("_id", 1))
        if docs and self.publish(docs):
            self.stats["relayed"] += len(docs)
            metrics.RELAYED.inc(len(docs))
            log.info("relay published %d notifications left unpublished", len(docs))
        elif docs:
            coll.update_many({"claim": claim, "published": False}, {"$set": {"lease_until": now}})
        return len(ids)
