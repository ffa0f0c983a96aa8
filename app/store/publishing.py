"""Storing and publishing notifications: the write path.

Concurrent POSTs in a worker are coalesced: a single batcher greenlet takes everything
queued while the previous write was in flight, gives each notification a proposed cursor
(no round trip) and stores them with one ``insert_many``; a publisher greenlet publishes
what was stored, in order, everything stored meanwhile in one Lua call (PUBLISH, replay
and recent lists, cache invalidation). A request waits only for its own batch, so
nothing waits at low load, and for its publish at most what is left of its Redis budget
(``PUBLISH_TIMEOUT_SECONDS``): a Redis that hangs leaves the publish to the relay, as one
that is down does, and the request answers 201 with ``seq: null``.

A batch whose insert fails for a reason other than an unreachable database (a value the
store refuses, a taken ``Idempotency-Key``) is removed and stored again one request at a
time, so only the requests at fault fail. A failure of the database itself fails the
batch, and nothing is removed: its outcome is unknown, and a batch that was stored has
its marker, so the relay publishes it.

Every document is written once, with its cursor: the script keeps the proposed one unless
another worker already published a later one for that user (then it publishes a fresh
one, written back to MongoDB after the publish). Each batch has an outbox marker, inserted
first in the batch's ``insert_many``, so it exists whenever any document of the batch
does, at no round trip of its own. What follows the publish (removing markers, writing
back replaced cursors) and the relay that publishes batches whose publish never happened
are in ``app/store/outbox.py``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gevent
import orjson
import redis
from gevent.event import AsyncResult
from gevent.queue import Queue

from app.config import Config
from app.extensions import RedisBudget
from app.ops import metrics
from app.store.inserting import StoreUnavailable, insert_isolated
from app.store.outbox import Outbox
from app.store.serialization import public_json
from app.store.sharded import publish_runner

if TYPE_CHECKING:
    from app.preferences.store import PreferenceCache

log = logging.getLogger(__name__)

MAX_BATCH_DOCS = 5000
MAX_UNPUBLISHED_DOCS = 20000  # stored, waiting for a slow Redis; beyond, the relay takes over
MAX_CLOCK_AHEAD_US = 1_000_000  # a proposed cursor further ahead of Redis time is replaced
HIDDEN_BY_PREFERENCES = "preferences"  # a notification's ``hidden``: its user keeps it out of the inbox


@dataclass
class _Job:
    docs: list[dict[str, Any]]
    stored: AsyncResult = field(default_factory=AsyncResult)  # None, or the insert's exception
    published: AsyncResult = field(default_factory=AsyncResult)  # True / False once tried
    abandoned: bool = False  # its request stopped waiting: not to be stored any more


@dataclass
class _Batch:
    """Jobs stored together (each with its marker), waiting for their publish."""

    jobs: list[_Job]
    markers: list[Any]

    @property
    def docs(self) -> list[dict[str, Any]]:
        return [doc for job in self.jobs for doc in job.docs]


@dataclass
class Stored:
    """What a request gets back: its notifications, and whether they were pushed live."""

    notifications: list[dict[str, Any]]
    published: bool
    replayed: bool = False  # the notifications an earlier attempt with its key stored


class Publisher:
    def __init__(self, config: Config, redis_client: redis.Redis) -> None:
        self.config = config
        self.redis = redis_client
        self.prefix = config.KEY_PREFIX
        self._last_proposed = 0
        self._script = publish_runner(redis_client, config.REDIS_MODE == "cluster")
        self._jobs: Queue = Queue()
        self._stored: Queue = Queue()  # _Batch, in insert order
        self._unpublished = 0  # documents in self._stored or being published
        self._overflow_logged_at = 0.0
        self._greenlets: list[gevent.Greenlet] = []
        self.stats = {"batches": 0, "stored": 0, "published": 0, "relayed": 0, "resequenced": 0}
        self.outbox = Outbox(config, self.publish, self.stats)
        # The delivery trace's record of each publish: (ids, when the publish call started).
        self.on_published: Callable[[list[dict[str, Any]], float], None] = lambda docs, at: None
        # Users' preferences (app/preferences/): a category whose live channel is off is
        # stored and replayed but not published on the user's channel; one whose inbox is
        # off is stored out of the inbox and not published at all (``hide_from_inbox``).
        self.preferences: PreferenceCache | None = None
        # What else follows a publish (Web Push, app/push/); must not block.
        self.after_publish: list[Callable[[list[dict[str, Any]]], None]] = []

    # -- lifecycle -------------------------------------------------------------------
    def start(self, relay: bool = True) -> None:
        if self._greenlets:
            return
        loops = [self._batch_loop, self._publish_loop, self.outbox.writeback_loop]
        self._greenlets = [gevent.spawn(loop) for loop in loops]
        if relay:
            self._greenlets.append(gevent.spawn(self.outbox.relay_loop))

    def stop(self) -> None:
        gevent.killall(self._greenlets, block=False)
        self._greenlets = []

    # -- write path ------------------------------------------------------------------
    def store(self, docs: list[dict[str, Any]], budget: RedisBudget | None = None) -> Stored:
        """Store ``docs`` (raw MongoDB documents) and publish them; blocks this greenlet.

        Waits for the publish only as long as ``budget`` lasts (``PUBLISH_TIMEOUT_SECONDS``
        from the end of the insert by default). Raises what
        ``app/store/inserting.py`` raises when the documents were not stored."""
        self.start()
        job = _Job(docs)
        self._jobs.put(job)
        try:
            job.stored.get(timeout=self.config.MONGO_OP_TIMEOUT_MS / 1000)
        except gevent.Timeout:
            # MongoDB stalls: answer now. A batch already being inserted may still be
            # stored; its marker makes the relay publish it, like any unpublished batch.
            job.abandoned = True
            raise StoreUnavailable("MongoDB did not store the batch in time") from None
        budget = budget or RedisBudget(self.config.PUBLISH_TIMEOUT_SECONDS)
        published = budget.wait(job.published) is True
        body = [public_json(d) for d in docs]
        if not published:  # the relay will publish it, possibly with another cursor
            for notification in body:
                notification["seq"] = None
        return Stored(body, published)

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
                    if not job.stored.ready():
                        job.stored.set_exception(StoreUnavailable(str(exc)))

    def _process(self, jobs: list[_Job]) -> None:
        self.hide_from_inbox([doc for job in jobs for doc in job.docs])
        self.propose_cursors([doc for job in jobs for doc in job.docs])
        stored, markers = [], []
        for group, outcome in insert_isolated([job.docs for job in jobs], self.config):
            if isinstance(outcome, Exception):
                for i in group:
                    jobs[i].stored.set_exception(outcome)
                continue
            markers.append(outcome)
            stored += [jobs[i] for i in group]
        if not stored:
            return
        self.stats["batches"] += 1
        self.stats["stored"] += sum(len(job.docs) for job in stored)
        metrics.CREATED.inc(sum(len(job.docs) for job in stored))
        if self.config.TEST_CRASH_AFTER_INSERT and not self.config.is_production:
            log.warning("TEST_CRASH_AFTER_INSERT set: exiting between insert and publish")
            os._exit(70)
        batch = _Batch(stored, markers)
        if self._unpublished + len(batch.docs) <= MAX_UNPUBLISHED_DOCS:
            self._unpublished += len(batch.docs)
            self._stored.put(batch)
        else:  # Redis has not kept up for a while: the markers' leases hand these to the relay
            if time.monotonic() - self._overflow_logged_at > 10:
                self._overflow_logged_at = time.monotonic()
                log.warning("%d notifications wait for Redis; the relay takes newer ones", self._unpublished)
            for job in stored:
                job.published.set(False)
        for job in stored:
            job.stored.set(None)

    def _publish_loop(self) -> None:
        """Publish stored batches in order, all that were stored meanwhile in one call."""
        while True:
            batches = [self._stored.get()]
            count = len(batches[0].docs)
            while count < MAX_BATCH_DOCS and not self._stored.empty():
                batches.append(self._stored.get_nowait())
                count += len(batches[-1].docs)
            markers = [m for batch in batches for m in batch.markers]
            try:
                published = self.publish([d for b in batches for d in b.docs], markers, wake_cleanup=False)
                if not published:
                    self.outbox.release_leases(markers)
            except Exception:  # never let the publisher die; the markers stay for the relay
                log.exception("publish failed unexpectedly")
                published = False
            self._unpublished -= count
            for batch in batches:
                for job in batch.jobs:
                    job.published.set(published)
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

    def hide_from_inbox(self, docs: list[dict[str, Any]]) -> None:
        """Mark, before they are stored, the ``docs`` whose user keeps their category out of
        the inbox (``[]`` in app/preferences/): ``read: None``, which every inbox listing,
        count, state change and replay leaves out (as a scheduled notification not sent
        yet), and ``hidden: "preferences"``, which says why. ``publish`` leaves them out:
        no stream, replay list, recent list or Web Push. One read of the batch's users'
        preferences, which the publish then finds cached; a preference store that cannot be
        read leaves the batch in the inbox (the defaults)."""
        if self.preferences is None or not docs:
            return
        prefs = self.preferences.get_many({doc["user_id"] for doc in docs})
        for doc in docs:
            user_prefs = prefs.get(doc["user_id"])
            if user_prefs is not None and not user_prefs.inbox(doc.get("category")):
                doc.update(read=None, hidden=HIDDEN_BY_PREFERENCES)

    # -- publish ---------------------------------------------------------------------
    def _script_head(self, kind: str) -> list[Any]:
        return [
            self.prefix,
            self.config.RECENT_LIMIT,
            self.config.REPLAY_BUFFER_SIZE,
            self.config.REPLAY_BUFFER_TTL_SECONDS,
            int(self.config.PUBLISH_LEASE_SECONDS * 1_000_000),
            MAX_CLOCK_AHEAD_US,
            kind,
        ]

    def live_flags(self, docs: list[dict[str, Any]]) -> list[str]:
        """Per document, ``"1"`` if its user takes its category live (their preferences, one
        read for the batch), else ``"0"``: the publish script's per-event flag."""
        prefs = self.preferences.get_many({doc["user_id"] for doc in docs}) if self.preferences else {}
        flags = []
        for doc in docs:
            user_prefs = prefs.get(doc["user_id"])
            flags.append("1" if user_prefs is None or user_prefs.live(doc.get("category")) else "0")
        return flags

    def publish_state(self, user_id: str, payload: bytes, kind: str = "s", live: str = "1") -> int | None:
        """Publish an inbox state change of ``user_id`` (a JSON object) as the next event of
        that user's stream: the same script, channel and cursors as notifications, so every
        client sees changes and notifications in one order, and the user's cached pages and
        counts are invalidated in the same step. The cursor, or None if Redis failed.

        ``kind``: ``s`` a state change, ``u`` a notification updated in place; ``live``
        ``"0"``: replayed, not sent to open streams (a category whose live channel is off)."""
        try:
            (seq,) = self._script(self._script_head(kind), [(user_id, "", payload, live)])
        except redis.RedisError as exc:
            metrics.redis_error("publish")
            log.warning("state publish failed: %s", exc)
            return None
        return int(seq)

    def publish(self, docs: list[dict[str, Any]], markers: list[Any], wake_cleanup: bool = True) -> bool:
        """One Lua call for all ``docs``, in order; then ``markers`` are cleaned up (queued;
        the clean-up greenlet is woken unless ``wake_cleanup`` is False: the caller will).

        Sets ``doc["seq"]`` to the cursor published (a replaced one is written back to
        MongoDB). False if Redis failed: nothing is cleaned up and the relay retries. What
        is ``hidden`` (``hide_from_inbox``) is not published; its markers are cleaned up.
        """
        if not docs:
            return True
        docs = [doc for doc in docs if not doc.get("hidden")]
        if not docs:
            self.outbox.published(markers, [], wake_cleanup)
            return True
        head = self._script_head("n")
        notes = []
        for doc, live in zip(docs, self.live_flags(docs), strict=True):
            body = public_json(doc)
            del body["seq"]  # the script puts the cursor it publishes in front
            seq = "" if doc.get("seq") is None else doc["seq"]
            notes.append((doc["user_id"], seq, orjson.dumps(body), live))
        publishing_at = time.time()  # the message is on the channel before the script returns
        try:
            seqs = self._script(head, notes)
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
        self.on_published(docs, publishing_at)
        for hook in self.after_publish:
            hook(docs)
        self.stats["published"] += len(docs)
        metrics.PUBLISHED.inc(len(docs))
        return True
