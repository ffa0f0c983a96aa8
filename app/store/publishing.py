"""Storing and publishing notifications: the write path.

Concurrent POSTs in a worker are coalesced: a single batcher greenlet takes everything
queued while the previous write was in flight, gives each notification a proposed cursor
(no round trip), stores them with one ``insert_many`` and publishes them with one Lua call
(PUBLISH, replay and recent lists, cache invalidation). A request waits only for its own
batch, so nothing waits at low load.

Every document is written once, with its cursor: the script keeps the proposed one unless
another worker already published a later one for that user (then it publishes a fresh
one, written back to MongoDB after the publish). Each batch has an outbox marker, inserted
first in the batch's ``insert_many``, so it exists whenever any document of the batch
does, at no round trip of its own. What follows the publish (removing markers, writing
back replaced cursors) and the relay that publishes batches whose publish never happened
are in ``app/outbox.py``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import gevent
import orjson
import pymongo
import redis
from gevent.event import AsyncResult
from gevent.queue import Queue
from pymongo.errors import PyMongoError

from app.config import Config
from app.ops import metrics
from app.store import lua
from app.store.models import OUTBOX_USER, id_chunks, notifications_collection, outbox_marker
from app.store.outbox import Outbox, lease_from_now
from app.store.serialization import public_json

log = logging.getLogger(__name__)

MAX_BATCH_DOCS = 5000
MAX_CLOCK_AHEAD_US = 1_000_000  # a proposed cursor further ahead of Redis time is replaced


class StoreUnavailable(RuntimeError):
    """MongoDB did not store the notifications: nothing was published."""


@dataclass
class _Job:
    docs: list[dict[str, Any]]
    result: AsyncResult = field(default_factory=AsyncResult)
    abandoned: bool = False  # its request stopped waiting: not to be stored any more


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
        self._last_proposed = 0
        self._script = lua.LeanScript(redis_client, lua.PUBLISH)
        self._jobs: Queue = Queue()
        self._greenlets: list[gevent.Greenlet] = []
        self.stats = {"batches": 0, "stored": 0, "published": 0, "relayed": 0, "resequenced": 0}
        self.outbox = Outbox(config, self.publish, self.stats)

    # -- lifecycle -------------------------------------------------------------------
    def start(self, relay: bool = True) -> None:
        if self._greenlets:
            return
        self._greenlets = [gevent.spawn(self._batch_loop), gevent.spawn(self.outbox.writeback_loop)]
        if relay:
            self._greenlets.append(gevent.spawn(self.outbox.relay_loop))

    def stop(self) -> None:
        gevent.killall(self._greenlets, block=False)
        self._greenlets = []

    # -- write path ------------------------------------------------------------------
    def store(self, docs: list[dict[str, Any]]) -> Stored:
        """Store ``docs`` (raw MongoDB documents) and publish them; blocks this greenlet."""
        self.start()
        job = _Job(docs)
        self._jobs.put(job)
        try:
            return job.result.get(timeout=self.config.MONGO_OP_TIMEOUT_MS / 1000)
        except gevent.Timeout:
            # MongoDB stalls: answer now. A batch already being inserted may still be
            # stored; its marker makes the relay publish it, like any unpublished batch.
            job.abandoned = True
            raise StoreUnavailable("MongoDB did not store the batch in time") from None

    def _batch_loop(self) -> None:
        while True:
            jobs = [self._jobs.get()]
            self.outbox.wait_for_room()
            count = len(jobs[0].docs)
            while count < MAX_BATCH_DOCS and not self._jobs.empty():
                job = self._jobs.get_nowait()
                jobs.append(job)
                count += len(job.docs)
            jobs = [job for job in jobs if not job.abandoned]
            if not jobs:
                continue
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
        marker = outbox_marker(ids, lease_from_now(self.config))  # the lease from now, not from the queueing
        if not self._insert(jobs, docs, marker):
            return
        self.stats["batches"] += 1
        if self.config.TEST_CRASH_AFTER_INSERT and not self.config.is_production:
            log.warning("TEST_CRASH_AFTER_INSERT set: exiting between insert and publish")
            os._exit(70)
        published = self.publish(docs, [marker["_id"]], wake_cleanup=False)
        if not published:
            self.outbox.release_leases([marker["_id"]])
        for job in jobs:
            body = [public_json(d) for d in job.docs]
            if not published:  # the relay will publish it, possibly with another cursor
                for notification in body:
                    notification["seq"] = None
            job.result.set(Stored(body, published))
        if published:  # after the results: the waiting requests answer before the clean-up runs
            self.outbox.wake_cleanup()

    def propose_cursors(self, docs: list[dict[str, Any]]) -> None:
        """Cursors increasing within this worker and close to every other worker's clock."""
        last = self._last_proposed
        now_us = time.time_ns() // 1000
        for doc in docs:
            last = max(last + 1, now_us)
            doc["seq"] = last
        self._last_proposed = last

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

    def _forget(self, marker: dict[str, Any]) -> None:
        """Nothing half-written: remove whatever part of a failed batch was stored.

        The marker goes last: if this fails, the relay publishes what is left, late. One
        deadline for all of it, so a stalled database holds the batcher one bound, not one
        per call."""
        coll = notifications_collection()
        try:
            with pymongo.timeout(self.config.MONGO_OP_TIMEOUT_MS / 1000):
                for chunk in id_chunks(marker["ids"]):
                    coll.delete_many({"_id": {"$in": chunk}})
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
            seqs = self._script(args)
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
        self.outbox.published(markers, fixes, wake_cleanup)
        self.stats["published"] += len(docs)
        metrics.PUBLISHED.inc(len(docs))
        return True
