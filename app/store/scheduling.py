"""Scheduled notifications (``send_at``): stored at once, published when due, by any instance.

MongoDB holds the schedule, nothing in memory does, so a delay of months is no different
from one of seconds and survives every restart. A notification waiting for its time has
``read: None``: every inbox listing, count, state change and replay names ``read`` as
False or True (``app/store/inbox.py``), so it is in none of them until it is sent. Its
``due_at`` (sparse index ``due``) is the time it is due, and only waiting notifications
have one, so the scheduler's query is a short range of that index whatever the collection
holds.

A scheduler greenlet in every worker claims what is due as the outbox relay claims
markers: one update moves ``due_at`` a lease ahead (``SCHEDULE_LEASE_SECONDS``) and names
its claim, and only what carries its claim is published by it, so two instances never
both send one. An instance that dies holding a claim leaves it due again when the lease
ends, for whichever instance is up. The claimant puts it in the inbox (``read`` False, a
proposed cursor, ``sent_at``), publishes it with the same call as every notification
(cursors, replay list, caches), and then removes ``due_at`` and the claim: from then on
it is an ordinary notification. If its user's preferences (as they are when it is due)
keep its category out of the inbox, it gets ``hidden`` instead, keeps ``read`` None and is
not published (``Publisher.hide_from_inbox``).

A waiting notification can be cancelled (deleted) until a scheduler claims it.
"""

from __future__ import annotations

import logging
import os
import uuid
from datetime import datetime, timedelta
from typing import Any

import gevent
import pymongo
import redis
from gevent.event import Event as Wakeup
from pymongo import UpdateOne
from pymongo.errors import PyMongoError

from app.config import Config
from app.ops import metrics
from app.store.collapsing import Delete, mark_replaced, retire
from app.store.idempotency import is_key_taken
from app.store.inserting import KeyTaken, StoreRefused, StoreUnavailable, unreachable
from app.store.models import PUBLIC_PROJECTION, notifications_collection
from app.store.publishing import Publisher
from app.store.serialization import utc_now_ms

log = logging.getLogger(__name__)

CLAIM_BATCH = 100  # notifications claimed per pass (one call by ids, MAX_IDS_PER_CALL)
POLL_SECONDS = 1.0  # the longest a scheduler sleeps: what another instance stored meanwhile
WAITING = {"read": None, "due_at": {"$ne": None}}  # stored, not sent, not claimed or claimed


def schedule(docs: list[dict[str, Any]], send_at: datetime) -> None:
    """Make ``docs`` wait for ``send_at``: out of every inbox until then; its created time."""
    for doc in docs:
        doc.update(read=None, send_at=send_at, due_at=send_at, created_at=send_at)


def store_waiting(docs: list[dict[str, Any]], config: Config) -> None:
    """Insert scheduled ``docs`` (no outbox marker: nothing is to be published now).

    Raises what ``app/store/inserting.py`` raises for a batch."""
    try:
        with pymongo.timeout(config.MONGO_OP_TIMEOUT_MS / 1000):
            notifications_collection().insert_many(docs, ordered=True)
    except Exception as exc:  # noqa: BLE001 - BSON encoding errors are not PyMongoError
        if unreachable(exc):
            raise StoreUnavailable("MongoDB did not store the notification") from exc
        if is_key_taken(exc):
            raise KeyTaken("Idempotency-Key already stored") from exc
        with pymongo.timeout(config.MONGO_OP_TIMEOUT_MS / 1000):
            notifications_collection().delete_many({"_id": {"$in": [d["_id"] for d in docs]}})
        raise StoreRefused(type(exc).__name__) from exc


def cancel(oid: Any) -> str:
    """Cancel a waiting notification: ``cancelled``, or why not (``sent``, ``sending``,
    ``missing``)."""
    coll = notifications_collection()
    if coll.delete_one({"_id": oid, **WAITING, "claim": None}).deleted_count:
        return "cancelled"
    doc = coll.find_one({"_id": oid}, {"claim": 1, "user_id": 1})
    if doc is None or doc["user_id"] >= "~":
        return "missing"
    return "sending" if doc.get("claim") else "sent"


class Scheduler:
    """One greenlet per worker: claims due notifications and publishes them."""

    def __init__(self, config: Config, publisher: Publisher, delete: Delete) -> None:
        self.config = config
        self.publisher = publisher
        self.delete = delete  # what a collapse_key replaces leaves the inbox this way
        self.sent = 0
        self._wakeup = Wakeup()
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def wake(self) -> None:
        """Something was scheduled here: look again now (it may be due before the next poll)."""
        self._wakeup.set()

    def _run(self) -> None:
        while True:
            try:
                delay = self.run_once()
            except (PyMongoError, redis.RedisError) as exc:
                log.warning("scheduler pass failed, retrying: %s", exc)
                delay = POLL_SECONDS
            except Exception:  # never let the scheduler die: scheduled notifications would wait forever
                log.exception("scheduler pass failed unexpectedly")
                delay = POLL_SECONDS
            self._wakeup.wait(delay)
            self._wakeup.clear()

    def run_once(self) -> float:
        """Send what is due; the seconds until the next one is due (at most ``POLL_SECONDS``).

        The query reaches only ``POLL_SECONDS`` ahead: the dev server applies ``limit``
        after it has read every match, so the range itself is what keeps a pass short.
        Oldest due first, ``CLAIM_BATCH`` at a time."""
        now = utc_now_ms()
        horizon = now + timedelta(seconds=POLL_SECONDS)
        coll = notifications_collection()
        found = coll.find({"due_at": {"$lte": horizon}}, {"due_at": 1}).sort("due_at", 1)
        soon = list(found.limit(CLAIM_BATCH))
        due = [d["_id"] for d in soon if d["due_at"] <= now]
        if due:
            self._send(due, now)
            if len(due) == CLAIM_BATCH:  # a backlog (every instance was down): on at once
                return 0.0
        later = [d["due_at"] for d in soon if d["due_at"] > now]
        return max(0.0, (min(later, default=horizon) - utc_now_ms()).total_seconds())

    def _send(self, due: list[Any], now: datetime) -> None:
        """Claim ``due``, put it in the inbox, publish it, release the claim.

        It is in the inbox (``read`` False, its proposed cursor) before its publish, so a
        client that gets the event finds it in its history; its claim is released only
        after the publish. An instance that dies in between leaves the claim to expire:
        another publishes it then, under a new cursor, so nothing is lost."""
        coll = notifications_collection()
        claim = uuid.uuid4().hex
        lease = now + timedelta(seconds=self.config.SCHEDULE_LEASE_SECONDS)
        change = {"$set": {"due_at": lease, "claim": claim}}
        coll.update_many({"_id": {"$in": due}, "due_at": {"$lte": now}}, change)
        docs = list(coll.find({"_id": {"$in": due}, "claim": claim}, PUBLIC_PROJECTION))
        if not docs:
            return
        if self.config.TEST_CRASH_AFTER_CLAIM and not self.config.is_production:
            log.warning("TEST_CRASH_AFTER_CLAIM set: exiting holding a claim")
            os._exit(70)
        docs.sort(key=lambda doc: (doc["send_at"], doc["_id"]))
        self.publisher.propose_cursors(docs)
        replaced = mark_replaced(docs)
        sent_at = utc_now_ms()
        for doc in docs:
            doc.update(read=False, sent_at=sent_at)
        self.publisher.hide_from_inbox(docs)  # its user's preferences as they are now
        ops = [UpdateOne({"_id": doc["_id"], "claim": claim}, {"$set": _sent(doc)}) for doc in docs]
        coll.bulk_write(ops, ordered=False)
        mine = {"_id": {"$in": [doc["_id"] for doc in docs]}, "claim": claim}
        if not self.publisher.publish(docs, []):  # Redis failed: due again soon, for the next pass
            coll.update_many(mine, {"$set": {"due_at": now + timedelta(seconds=POLL_SECONDS)}})
            return
        coll.update_many(mine, {"$unset": {"due_at": "", "claim": ""}})  # a replaced cursor: the outbox
        self.sent += len(docs)
        metrics.SCHEDULED_SENT.inc(len(docs))
        retire(docs, replaced, self.delete)


def _sent(doc: dict[str, Any]) -> dict[str, Any]:
    """What a sent notification keeps: its place in the inbox (or ``hidden``, out of it by
    its user's preferences), and whom it replaced."""
    sent = {"read": doc["read"], "seq": doc["seq"], "sent_at": doc["sent_at"]}
    sent["replaces"] = doc.get("replaces")
    if doc.get("hidden"):
        sent["hidden"] = doc["hidden"]
    return sent
