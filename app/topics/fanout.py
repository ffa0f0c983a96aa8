"""Fan-out: one notification published to a topic becomes one notification per subscriber.

The request stores a ``Fanout`` document (topic, content, state) and answers 202 at once.
A worker of any instance claims it with a lease, as the outbox relay claims a batch
(``app/store/outbox.py``), then sends it page by page: ``FANOUT_PAGE_SIZE`` subscribers
in ``user_id`` order go through the one write path of every bulk POST (the batcher:
insert with an outbox marker, one publish script), and after each page the fan-out
records the last user id done and renews its lease in one write. Memory is one page.

A worker that dies leaves the lease to expire; whichever worker claims the fan-out next
resumes after the last recorded user id. The page it redoes may be stored already (the
crash came between the insert and the progress write): every copy carries the
idempotency key ``~fanout:<fan-out id>:<user id>`` under the notifications' unique
``idem`` index, so that insert fails on the key (``KeyTaken``), the copies stored before
are left alone (their outbox marker gets them published, if the crash came before the
publish) and only the missing ones are stored. Nothing is sent twice, nothing skipped.
A worker that lost its lease (a stall longer than ``FANOUT_LEASE_SECONDS``) finds out at
its next progress write, which names its claim, and stops.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from typing import Any

import gevent
from bson import ObjectId
from bson.errors import InvalidId
from gevent.event import Event
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from app.config import Config
from app.errors import ApiError
from app.extensions import RedisBudget
from app.ops.mongocalls import long_mongo_calls
from app.store.inserting import KeyTaken, StoreRefused, StoreUnavailable
from app.store.models import create_missing, ensure_key_index, id_chunks, notifications_collection
from app.store.publishing import Publisher
from app.store.serialization import iso, new_document, utc_now_ms
from app.topics.models import (
    DONE,
    FANOUT_STATE_INDEX,
    OPEN_STATES,
    PENDING,
    RUNNING,
    Fanout,
    fanouts_collection,
)
from app.topics.subscribers import Subscribers, store_errors

log = logging.getLogger(__name__)

FAILED = "failed"  # the store refused the content (nothing a retry changes)
RECENT = 10  # fan-outs the dashboard shows


def now_us() -> int:
    return time.time_ns() // 1000


def copy_key(fanout_id: Any, user_id: str) -> str:
    """The idempotency key of one subscriber's copy: one copy per fan-out and user, ever."""
    return f"~fanout:{fanout_id}:{user_id}"


def public_fanout(doc: dict[str, Any]) -> dict[str, Any]:
    def when(field: str) -> str | None:
        return iso(doc[field]) if doc.get(field) else None

    return {
        "id": str(doc["_id"]),
        "topic": doc["topic"],
        "state": doc["state"],
        "done": doc.get("done", 0),
        "total": doc.get("total"),
        "created_at": when("created_at"),
        "started_at": when("started_at"),
        "finished_at": when("finished_at"),
    }


class Fanouts:
    """The fan-out documents: made by a topic POST, read for progress."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._key_index_ready = False

    def create(
        self, owner: str, topic: str, content: dict[str, Any], key: tuple[str, bytes] | None
    ) -> tuple[dict[str, Any], bool]:
        """Store a pending fan-out; (its public form, whether an earlier attempt made it).

        ``key``: the request's ``Idempotency-Key`` and raw body: a retry with both gets
        the first fan-out, with another body a 409."""
        doc: dict[str, Any] = {
            "_id": ObjectId(),
            "topic": topic,
            "content": content,
            "owner": owner,
            "state": PENDING,
            "after": "",
            "done": 0,
            "total": None,
            "pages": 0,
            "lease_until": 0,
            "created_at": utc_now_ms(),
        }
        if key is not None:
            doc["idem"] = f"{owner}:{key[0]}"
            doc["idem_hash"] = hashlib.sha256(key[1]).hexdigest()
        with store_errors():
            if key is not None and not self._key_index_ready:  # without it a key would not hold
                create_missing(Fanout)
                self._key_index_ready = True
            try:
                fanouts_collection().insert_one(doc)
            except DuplicateKeyError:
                first = fanouts_collection().find_one({"idem": doc["idem"]})
                if first is None or first.get("idem_hash") != doc["idem_hash"]:
                    message = "Idempotency-Key was already used with a different body"
                    raise ApiError(409, "idempotency_conflict", message) from None
                return public_fanout(first), True
        return public_fanout(doc), False

    def get(self, fanout_id: str) -> dict[str, Any]:
        try:
            oid = ObjectId(fanout_id)
        except (InvalidId, TypeError):
            raise ApiError(422, "invalid_field", "id: not a fan-out id", field="id") from None
        with store_errors():
            doc = fanouts_collection().find_one({"_id": oid})
        if doc is None:
            raise ApiError(404, "not_found", "no such fan-out")
        return public_fanout(doc)

    def recent(self, limit: int = RECENT) -> list[dict[str, Any]]:
        """The newest fan-outs, for the dashboard (empty when MongoDB does not answer)."""
        try:
            docs = fanouts_collection().find({}, {"content": 0}).sort("_id", -1).limit(limit)
            return [public_fanout(doc) for doc in docs]
        except PyMongoError as exc:
            log.warning("fan-outs unavailable for the dashboard: %s", exc)
            return []


class FanoutWorker:
    """One greenlet per worker process: claims due fan-outs and sends them, one at a time."""

    def __init__(self, config: Config, subscribers: Subscribers, publisher: Publisher) -> None:
        self.config = config
        self.subscribers = subscribers
        self.publisher = publisher
        self._wakeup = Event()
        self._greenlet: gevent.Greenlet | None = None
        self._key_index_ready = False
        self._current: tuple[Any, str] | None = None  # (fan-out id, claim) being sent

    def start(self) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._loop)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def hand_off(self, timeout: float = 2.0) -> None:
        """At worker exit: stop, and give the fan-out being sent back at once rather than
        after its lease (a page being stored meanwhile is found by its keys)."""
        current = self._current
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=timeout)
            self._greenlet = None
        if current is not None:
            try:
                fanouts_collection().update_one(
                    {"_id": current[0], "claim": current[1]}, {"$set": {"lease_until": 0}}
                )
            except PyMongoError as exc:
                log.warning("fan-out %s not handed off; resumed after its lease: %s", current[0], exc)

    def wake(self) -> None:
        """A fan-out was just created here: start it now rather than at the next poll."""
        self._wakeup.set()

    def _loop(self) -> None:
        while True:
            self._wakeup.wait(self.config.FANOUT_POLL_SECONDS)
            self._wakeup.clear()
            try:
                while (claimed := self.claim()) is not None:
                    self.run(claimed)
            except (PyMongoError, StoreUnavailable) as exc:
                log.warning("fan-out pass failed, retried after its lease: %s", exc)
            except Exception:
                log.exception("fan-out pass failed unexpectedly")

    def _lease(self) -> int:
        return now_us() + int(self.config.FANOUT_LEASE_SECONDS * 1_000_000)

    def claim(self) -> dict[str, Any] | None:
        """The oldest open fan-out whose lease ran out, now leased to this worker; or None."""
        coll = fanouts_collection()
        now = now_us()
        open_ = coll.find({"state": {"$in": list(OPEN_STATES)}}, {"lease_until": 1}).hint(FANOUT_STATE_INDEX)
        for doc in sorted(open_, key=lambda d: d["_id"]):
            if doc["lease_until"] >= now:
                continue
            claim = uuid.uuid4().hex
            claimed = coll.find_one_and_update(
                {"_id": doc["_id"], "lease_until": doc["lease_until"], "state": {"$in": list(OPEN_STATES)}},
                {"$set": {"state": RUNNING, "claim": claim, "lease_until": self._lease()},
                 "$min": {"started_at": utc_now_ms()}},
                return_document=ReturnDocument.AFTER,
            )  # fmt: skip
            if claimed is not None:
                return claimed
        return None

    def run(self, fanout: dict[str, Any]) -> None:
        """Send ``fanout`` from where it stands to its end, unless its lease is lost."""
        self._current = (fanout["_id"], fanout["claim"])
        try:
            self._send(fanout)
        finally:
            self._current = None

    def _send(self, fanout: dict[str, Any]) -> None:
        fid, claim, topic = fanout["_id"], fanout["claim"], fanout["topic"]
        after, done = fanout.get("after", ""), fanout.get("done", 0)
        progress: dict[str, Any] = {}
        if fanout.get("total") is None:
            with self._own_call():
                progress["total"] = self.subscribers.count(topic)
        if not self._key_index_ready:
            ensure_key_index()
            self._key_index_ready = True
        size = self.config.FANOUT_PAGE_SIZE
        log.info("fan-out %s to topic %r: resuming after %r (%d done)", fid, topic, after, done)
        while True:
            with self._own_call():
                users = self.subscribers.page(topic, after, size)
            if users:
                try:
                    self.store_page(fanout, users)
                except StoreRefused as exc:
                    log.error("fan-out %s refused by the store, stopped: %s", fid, exc)
                    failed = {"state": FAILED, "finished_at": utc_now_ms(), "lease_until": now_us()}
                    self._record(fid, claim, failed)
                    return
                after, done = users[-1], done + len(users)
            finished = len(users) < size
            progress.update(after=after, done=done, lease_until=self._lease())
            if finished:
                # a finished fan-out's lease_until is when it finished: retention finds the
                # old ones on the state index (prune_finished)
                progress.update(state=DONE, finished_at=utc_now_ms(), total=done, lease_until=now_us())
            if not self._record(fid, claim, progress, pages=1 if users else 0):
                log.warning("fan-out %s: lease lost to another worker after %r; leaving it", fid, after)
                return
            if finished:
                log.info("fan-out %s to topic %r done: %d notifications", fid, topic, done)
                return
            progress = {}
            if self.config.FANOUT_PAGE_INTERVAL_SECONDS:
                gevent.sleep(self.config.FANOUT_PAGE_INTERVAL_SECONDS)

    def _own_call(self) -> Any:
        """One of the fan-out's own reads and writes: background work, so a deadline of a
        third of the lease rather than a request's ``MONGO_OP_TIMEOUT_MS`` (a page of 1,000
        read from 100,000 subscriptions took seconds on the dev server) and, as such,
        not taken by /readyz for a stall."""
        return long_mongo_calls(self.config.FANOUT_LEASE_SECONDS / 3)

    def _record(self, fid: Any, claim: str, fields: dict[str, Any], pages: int = 0) -> bool:
        """Write progress if this worker still holds the claim; whether it did."""
        change: dict[str, Any] = {"$set": fields}
        if pages:
            change["$inc"] = {"pages": pages}
        with self._own_call():
            return fanouts_collection().update_one({"_id": fid, "claim": claim}, change).matched_count == 1

    def store_page(self, fanout: dict[str, Any], users: list[str]) -> None:
        """Store and publish one copy per user; copies an earlier attempt stored are kept."""
        content, fid = fanout["content"], fanout["_id"]
        docs = []
        for user in users:
            doc = new_document(
                user,
                content["message"],
                content.get("title", ""),
                content.get("category", ""),
                content.get("data") or {},
                fanout["created_at"],
                content.get("priority", "normal"),
                content.get("actions") or [],
            )
            doc["idem"] = copy_key(fid, user)
            docs.append(doc)
        for _attempt in range(3):
            try:
                self.publisher.store(docs, RedisBudget(self.config.PUBLISH_TIMEOUT_SECONDS))
                return
            except KeyTaken:
                stored = self._stored_keys([doc["idem"] for doc in docs])
                docs = [doc for doc in docs if doc["idem"] not in stored]
                for doc in docs:
                    doc["_id"] = ObjectId()  # the refused insert's ids may linger in a clean-up
                log.info("fan-out %s: %d of a page stored before; storing the rest", fid, len(stored))
                if not docs:
                    return
        raise PyMongoError(f"fan-out {fid}: a page kept meeting copies stored meanwhile")

    @staticmethod
    def _stored_keys(keys: list[str]) -> set[str]:
        coll = notifications_collection()
        found: set[str] = set()
        for chunk in id_chunks(keys):
            found.update(doc["idem"] for doc in coll.find({"idem": {"$in": chunk}}, {"idem": 1}))
        return found


def prune_finished(days: float) -> int:
    """Delete fan-outs that finished (done or failed) more than ``days`` ago, as retention
    deletes their notifications: a range of the ``(state, lease_until)`` index per state."""
    coll = fanouts_collection()
    before = now_us() - int(days * 86400 * 1_000_000)
    deleted = 0
    for state in (DONE, FAILED):
        old = {"state": state, "lease_until": {"$lt": before}}
        ids = [d["_id"] for d in coll.find(old, {"_id": 1}).hint(FANOUT_STATE_INDEX)]
        for chunk in id_chunks(ids):
            deleted += coll.delete_many({"_id": {"$in": chunk}, **old}).deleted_count
    return deleted
