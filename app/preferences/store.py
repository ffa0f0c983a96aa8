"""Preferences in MongoDB (``preferences``, one document per user, ``_id`` the user id) and
each worker's short-lived cache of them.

The publisher and the push sender read preferences once per batch, for all the batch's
users in one query, through ``PreferenceCache``: an entry lives
``PREFERENCES_CACHE_SECONDS`` (a change made through another worker takes effect there
within that time; through this one, at once). A database that fails the read gives the
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
    def __init__(self, ttl: float, timeout: float) -> None:
        self.ttl = ttl
        self.timeout = timeout
        self._entries: dict[str, tuple[float, Preferences]] = {}

    def invalidate(self, user_id: str) -> None:
        self._entries.pop(user_id, None)

    def get_many(self, user_ids: set[str]) -> dict[str, Preferences]:
        """Every user's preferences: cached ones, the rest in one query per chunk."""
        now = time.monotonic()
        found: dict[str, Preferences] = {}
        missing = []
        for user in user_ids:
            entry = self._entries.get(user)
            if entry and entry[0] > now:
                found[user] = entry[1]
            else:
                missing.append(user)
        if not missing:
            return found
        try:
            with pymongo.timeout(self.timeout):
                for chunk in id_chunks(missing):
                    for doc in collection().find({"_id": {"$in": chunk}}):
                        found[doc["_id"]] = _from_doc(doc)
        except PyMongoError as exc:
            log.warning("preferences unreadable, defaults used for %d users: %s", len(missing), exc)
            return {user: found.get(user, DEFAULTS) for user in user_ids}
        if len(self._entries) > 100_000:  # bounded: the expired ones go
            self._entries = {u: e for u, e in self._entries.items() if e[0] > now}
        for user in missing:
            prefs = found.setdefault(user, DEFAULTS)
            if self.ttl > 0:
                self._entries[user] = (now + self.ttl, prefs)
        return found

    def get(self, user_id: str) -> Preferences:
        return self.get_many({user_id})[user_id]
