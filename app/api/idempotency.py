"""``Idempotency-Key`` for POSTs: a retry gets the first response, not a second notification.

The record's primary key is ``<api key fingerprint>:<key>``, so MongoDB's unique ``_id``
decides which of two concurrent first attempts runs; the other is told to retry.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import timedelta

from pymongo.errors import DuplicateKeyError, PyMongoError

from app.errors import ApiError
from app.store.models import IdempotencyRecord
from app.store.serialization import utc_now_ms

KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
STALE_PENDING = timedelta(seconds=60)


def validate_key(value: str) -> str:
    if not KEY_RE.match(value):
        raise ApiError(
            422,
            "invalid_field",
            "Idempotency-Key: must be 1-255 printable ASCII characters",
            field="Idempotency-Key",
        )
    return value


def run_once(
    owner: str, key: str, body: bytes, produce: Callable[[], tuple[int, bytes]]
) -> tuple[int, bytes, bool]:
    """Run ``produce`` once per (owner, key). Returns (status, body, replayed)."""
    coll = IdempotencyRecord._get_collection()
    record_id = f"{owner}:{validate_key(key)}"
    body_hash = hashlib.sha256(body).hexdigest()
    now = utc_now_ms()
    try:
        coll.insert_one({"_id": record_id, "body_hash": body_hash, "created_at": now})
    except DuplicateKeyError:
        existing = coll.find_one({"_id": record_id}) or {}
        if existing.get("body_hash") != body_hash:
            raise ApiError(
                409, "idempotency_conflict", "Idempotency-Key was already used with a different body"
            ) from None
        if existing.get("status") is not None:
            return int(existing["status"]), existing["response"].encode(), True
        taken = coll.find_one_and_update(
            {"_id": record_id, "status": None, "created_at": {"$lt": now - STALE_PENDING}},
            {"$set": {"created_at": now}},
        )
        if taken is None:
            raise ApiError(
                409, "idempotency_in_progress", "a request with this Idempotency-Key is in progress"
            ) from None
    except PyMongoError:
        raise ApiError(503, "unavailable", "the notification store is unavailable, retry later") from None
    try:
        status, response = produce()
    except BaseException:
        coll.delete_one({"_id": record_id})
        raise
    coll.update_one({"_id": record_id}, {"$set": {"status": status, "response": response.decode()}})
    return status, response, False
