"""Pushes held back by a user's quiet hours, sent when they end, by any instance.

MongoDB holds them (``pending_pushes``, ``_id`` the notification's id, ``due_at`` the end
of the quiet hours), so a restart loses none. Every worker's loop claims what is due as
the scheduler claims scheduled notifications (``app/store/scheduling.py``): one update
moves ``due_at`` a lease ahead and names its claim, so two instances never both send
one, and one that dies holding a claim leaves it due again when the lease ends. The
claimant reads the notification again (deleted, read or expired meanwhile: nothing is sent),
hands it to the sender, which looks at the user's preferences and presence again, and
removes the entry. A user holds at most ``MAX_PER_USER``; beyond, a push is dropped (the
notification stays in the inbox).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import gevent
import pymongo
from mongoengine import DateTimeField, Document, ObjectIdField, StringField
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from app.ops import metrics
from app.store.models import notifications_collection

log = logging.getLogger(__name__)

MAX_PER_USER = 50
CLAIM_BATCH = 100
LEASE = timedelta(seconds=60)


class PendingPush(Document):
    id = ObjectIdField(primary_key=True)  # the notification's id
    user_id = StringField(required=True)
    due_at = DateTimeField(required=True)
    claim = StringField()

    meta = {
        "collection": "pending_pushes",
        "auto_create_index": False,
        "indexes": [{"fields": ["due_at"], "name": "due"}, {"fields": ["user_id"], "name": "user"}],
    }


def collection() -> Collection:
    return PendingPush._get_collection()


class DeferredPushes:
    def __init__(self, poll: float, timeout: float, deliver: Callable[[list[dict[str, Any]]], None]) -> None:
        self.poll = poll
        self.timeout = timeout
        self.deliver = deliver
        self.claim = uuid.uuid4().hex
        self._greenlet: gevent.Greenlet | None = None

    def defer(self, doc: dict[str, Any], due_at: datetime) -> None:
        """Hold ``doc``'s push until ``due_at`` (raises PyMongoError)."""
        with pymongo.timeout(self.timeout):
            coll = collection()
            if coll.count_documents({"user_id": doc["user_id"]}, limit=MAX_PER_USER) >= MAX_PER_USER:
                metrics.PUSH_SKIPPED.labels("deferred_full").inc()
                return
            entry = {"user_id": doc["user_id"], "due_at": due_at, "claim": None}
            coll.replace_one({"_id": doc["_id"]}, entry, upsert=True)
        metrics.PUSH_DEFERRED.inc()

    def start(self) -> None:
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._loop)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _loop(self) -> None:
        while True:
            try:
                while self.send_due() == CLAIM_BATCH:
                    pass
            except PyMongoError as exc:
                log.warning("deferred pushes not looked at: %s", exc)
            except Exception:  # the loop never dies
                log.exception("deferred pushes failed")
            gevent.sleep(self.poll)

    def send_due(self) -> int:
        """Claim what is due, hand it to the sender, remove it; how many were claimed."""
        now = datetime.now(timezone.utc)
        coll = collection()
        with pymongo.timeout(self.timeout):
            due = list(coll.find({"due_at": {"$lte": now}}, {"_id": 1, "due_at": 1}).limit(CLAIM_BATCH))
            mine = []
            for entry in due:
                taken = coll.update_one(
                    {"_id": entry["_id"], "due_at": entry["due_at"]},
                    {"$set": {"due_at": now + LEASE, "claim": self.claim}},
                )
                if taken.modified_count:
                    mine.append(entry["_id"])
            if not mine:
                return len(due)
            notes = notifications_collection().find({"_id": {"$in": mine}})
        ready = []
        for doc in notes:
            expires = doc.get("expires_at")
            if doc.get("read") or (expires is not None and expires.replace(tzinfo=timezone.utc) <= now):
                continue  # read in the inbox meanwhile, or expired: nothing to tell
            ready.append(doc)
        if ready:
            self.deliver(ready)
        with pymongo.timeout(self.timeout):
            coll.delete_many({"_id": {"$in": mine}, "claim": self.claim})
        return len(due)
