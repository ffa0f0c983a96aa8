"""Publisher API keys kept in MongoDB, beside the ``API_KEYS`` variable.

A key is ``nk_`` + 43 random URL-safe characters (256 bits), shown once when created.
Only its SHA-256 is stored: with that much entropy a plain hash cannot be reversed, and
it lets a presented key be looked up directly. Auth asks ``ApiKeyChecker`` (installed as
``app.extensions["api_key_checker"]``), which remembers answers for
``API_KEY_CACHE_SECONDS`` so a request does not cost a MongoDB round trip; a revoked key
therefore stops working within that time on other processes (at once on this one).
``last_used`` is written at most once a minute per key.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from bson import ObjectId
from bson.errors import InvalidId
from flask import Flask
from mongoengine import BooleanField, DateTimeField, Document, NotUniqueError, StringField
from pymongo.errors import PyMongoError

from app.errors import ApiError

log = logging.getLogger(__name__)

KEY_PREFIX = "nk_"
LAST_USED_EVERY = 60.0
CACHE_MAX = 10_000


class ApiKey(Document):
    name = StringField(required=True, max_length=100, unique=True)
    key_hash = StringField(required=True, unique=True)
    hint = StringField(required=True)  # the first characters, to recognise a key in a list
    created_at = DateTimeField(required=True)
    last_used = DateTimeField()
    revoked = BooleanField(default=False)
    revoked_at = DateTimeField()

    meta = {"collection": "api_keys"}


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def fingerprint_of_hash(key_hash: str) -> str:
    """Matches ``auth.fingerprint(key)``: idempotency and rate limits use the same id."""
    return key_hash[:16]


class ApiKeyProblem(ValueError):
    """A CLI-facing problem: unknown key, duplicate name."""


@dataclass(frozen=True)
class Created:
    key: str
    record: ApiKey


def create_key(name: str) -> Created:
    name = name.strip()
    if not name or len(name) > 100:
        raise ApiKeyProblem("name must be 1-100 characters")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(
        name=name,
        key_hash=hash_key(key),
        hint=key[:7],
        created_at=datetime.now(timezone.utc),
    )
    try:
        record.save(force_insert=True)
    except NotUniqueError:
        raise ApiKeyProblem(f"a key named {name!r} already exists (names are never reused)") from None
    return Created(key, record)


def list_keys() -> list[ApiKey]:
    return list(ApiKey.objects.order_by("created_at"))


def find_key(name_or_id: str) -> ApiKey:
    record = ApiKey.objects(name=name_or_id).first()
    if record is None:
        try:
            record = ApiKey.objects(id=ObjectId(name_or_id)).first()
        except (InvalidId, TypeError):
            record = None
    if record is None:
        raise ApiKeyProblem(f"no API key named or with id {name_or_id!r}")
    return record


def revoke_key(name_or_id: str, checker: ApiKeyChecker | None = None) -> ApiKey:
    record = find_key(name_or_id)
    if not record.revoked:
        record.revoked = True
        record.revoked_at = datetime.now(timezone.utc)
        record.save()
    if checker is not None:
        checker.forget(record.key_hash)
    return record


class ApiKeyChecker:
    """``callable(candidate) -> fingerprint | None`` with a small in-process cache."""

    def __init__(self, ttl: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[str, tuple[float, str | None]] = {}  # hash -> (expires, doc id)
        self._touched: dict[str, float] = {}
        self.lookups = 0

    def __call__(self, candidate: str) -> str | None:
        if not candidate.startswith(KEY_PREFIX) or len(candidate) > 200:
            return None  # not one of ours: no MongoDB query for junk
        key_hash = hash_key(candidate)
        now = self.clock()
        cached = self._cache.get(key_hash)
        if cached is None or cached[0] <= now:
            doc_id = self._lookup(key_hash)
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            self._cache[key_hash] = (now + self.ttl, doc_id)
        else:
            doc_id = cached[1]
        if doc_id is None:
            return None
        self._touch(key_hash, doc_id, now)
        return fingerprint_of_hash(key_hash)

    def forget(self, key_hash: str) -> None:
        self._cache.pop(key_hash, None)

    def _lookup(self, key_hash: str) -> str | None:
        self.lookups += 1
        try:
            query = {"key_hash": key_hash, "revoked": {"$ne": True}}
            doc = ApiKey._get_collection().find_one(query, {"_id": 1})
        except PyMongoError as exc:
            log.error("cannot check an API key, MongoDB unavailable: %s", exc)
            raise ApiError(503, "unavailable", "cannot verify the API key now, retry later") from None
        return str(doc["_id"]) if doc else None

    def _touch(self, key_hash: str, doc_id: str, now: float) -> None:
        if now - self._touched.get(key_hash, float("-inf")) < LAST_USED_EVERY:
            return
        self._touched[key_hash] = now
        if len(self._touched) > CACHE_MAX:
            self._touched.clear()
        try:
            ApiKey._get_collection().update_one(
                {"_id": ObjectId(doc_id)}, {"$set": {"last_used": datetime.now(timezone.utc)}}
            )
        except PyMongoError as exc:
            log.warning("could not record API key use: %s", exc)


def init_app(app: Flask) -> None:
    config = app.extensions["config"]
    app.extensions["api_key_checker"] = ApiKeyChecker(ttl=config.API_KEY_CACHE_SECONDS)
