"""Preferences in MongoDB (``preferences``, one document per user, ``_id`` the user id) and
each worker's short-lived cache of them.

The publisher and the push sender read preferences once per batch, for all the batch's
users in one query, through ``PreferenceCache``: an entry lives
``PREFERENCES_CACHE_SECONDS`` (a change made through another worker takes effect there
within that time; through this one, at once), and one used in the second half of its
life is read again in the background. A database that fails the read gives the
defaults for that batch, uncached: a notification delivered on a channel too many beats
one lost.

A stored document has the API's shape with each channel list as earlier versions wrote
it (``Preferences.to_doc``): ``inbox`` is never written, being implied by every list but
``[]``, so documents stored before the inbox was a channel mean what they meant.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any

import gevent
import pymongo
from mongoengine import DateTimeField, DictField, Document, ListField, StringField
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from app.preferences.model import DEFAULTS, Preferences, parse
from app.store.models import id_chunks

log = logging.getLogger(__name__)


class UserPreferences(Document):
    id = StringField(primary_key=True)  # the user id
    default = ListField(StringField())
    categories = ListField(ListField())  # [name, channels]
    quiet_hours = DictField(null=True)
    updated_at = DateTimeField()

    meta = {"collection": "preferences", "auto_create_index": False}


def collection() -> Collection:
    return UserPreferences._get_collection()


def _from_doc(doc: dict[str, Any]) -> Preferences:
    try:
        body = {
            "default": doc.get("default", list(DEFAULTS.default)),
            "categories": {name: channels for name, channels in doc.get("categories") or []},
            "quiet_hours": doc.get("quiet_hours"),
        }
        return parse(body)
    except (TypeError, ValueError) as exc:  # FieldInvalid too: not written by this version
        log.warning("stored preferences of %s unreadable (%s): defaults used", doc.get("_id"), exc)
        return DEFAULTS


def load(user_id: str) -> Preferences:
    doc = collection().find_one({"_id": user_id})
    return _from_doc(doc) if doc else DEFAULTS


def save(user_id: str, prefs: Preferences) -> None:
    doc = {**prefs.to_doc(), "updated_at": datetime.now(timezone.utc)}
    collection().replace_one({"_id": user_id}, doc, upsert=True)


class PreferenceCache:
    """Each entry lives ``ttl`` seconds; one read in the second half of its life is served
    from the cache and refreshed in the background (one query for all such users), so a
    user who gets notifications more often than every ``ttl / 2`` never waits for MongoDB
    on the send path, and no entry is ever older than ``ttl``."""

    def __init__(self, ttl: float, timeout: float) -> None:
        self.ttl = ttl
        self.timeout = timeout
        self._entries: dict[str, tuple[float, Preferences]] = {}
        self._stale: set[str] = set()  # read late in their life: refreshed in the background
        self._refresher: gevent.Greenlet | None = None
        self._epoch = 0  # bumped by each invalidation: a read begun before it is not cached

    def invalidate(self, user_id: str) -> None:
        self._entries.pop(user_id, None)
        self._epoch += 1

    def get_many(self, user_ids: set[str]) -> dict[str, Preferences]:
        """Every user's preferences: cached ones, the rest in one query per chunk."""
        now = time.monotonic()
        found: dict[str, Preferences] = {}
        missing = []
        for user in user_ids:
            entry = self._entries.get(user)
            if entry and entry[0] > now:
                found[user] = entry[1]
                if entry[0] - now < self.ttl / 2:
                    self._stale.add(user)
            else:
                missing.append(user)
        if self._stale and self._refresher is None:
            self._refresher = gevent.spawn(self._refresh)
        if not missing:
            return found
        try:
            found |= self._load(missing)
        except PyMongoError as exc:
            log.warning("preferences unreadable, defaults used for %d users: %s", len(missing), exc)
            return {user: found.get(user, DEFAULTS) for user in user_ids}
        return found

    def _load(self, users: list[str]) -> dict[str, Preferences]:
        """Read ``users`` (the defaults for those with nothing stored) and cache them."""
        epoch, found = self._epoch, {}
        with pymongo.timeout(self.timeout):
            for chunk in id_chunks(users):
                for doc in collection().find({"_id": {"$in": chunk}}):
                    found[doc["_id"]] = _from_doc(doc)
        now = time.monotonic()
        if len(self._entries) > 100_000:  # bounded: the expired ones go
            self._entries = {u: e for u, e in self._entries.items() if e[0] > now}
        for user in users:
            prefs = found.setdefault(user, DEFAULTS)
            if self.ttl > 0 and epoch == self._epoch:
                self._entries[user] = (now + self.ttl, prefs)
        return found

    def _refresh(self) -> None:
        users: list[str] = []
        try:
            while self._stale:
                users, self._stale = list(self._stale), set()
                self._load(users)
        except PyMongoError as exc:  # the entries expire as they would have; read again then
            log.warning("preferences of %d users not refreshed: %s", len(users), exc)
            self._stale = set()
        finally:
            self._refresher = None

    def get(self, user_id: str) -> Preferences:
        return self.get_many({user_id})[user_id]
