"""``Idempotency-Key``: a retry gets the notifications of the first attempt, never new ones.

The key is stored on the notifications themselves, in the insert that stores them: each
document of a request carries ``idem = "<api key fingerprint>:<key>:<index>"`` under a
unique index, and the first one also the body's hash. There is no separate record that
a timeout or a crash could leave behind without its notifications, or lose while they
were stored: when a first attempt's outcome was unknown (a 503 or a timeout while
MongoDB hung), the retry's insert either stores the notifications or fails on the key,
and then the stored ones are the answer. A key is kept as long as its notifications.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from pymongo.errors import BulkWriteError, DuplicateKeyError

from app.errors import ApiError
from app.store.models import notifications_collection, still_marked


@dataclass(frozen=True)
class RequestKey:
    """One request's ``Idempotency-Key``, scoped to its API key, and its body's hash."""

    scope: str  # "<api key fingerprint>:<key>"
    body_hash: str

    @classmethod
    def of(cls, owner: str, key: str, body: bytes) -> RequestKey:
        return cls(f"{owner}:{key}", hashlib.sha256(body).hexdigest())

    def names(self, count: int) -> list[str]:
        return [f"{self.scope}:{i}" for i in range(count)]

    def mark(self, docs: list[dict[str, Any]]) -> None:
        """Put the key on the request's documents (before they are stored)."""
        for doc, name in zip(docs, self.names(len(docs)), strict=True):
            doc["idem"] = name
        docs[0]["idem_hash"] = self.body_hash


def is_key_taken(exc: BaseException) -> bool:
    """Whether an insert failed because an ``idem`` key is stored already."""
    if isinstance(exc, BulkWriteError):
        errors = exc.details.get("writeErrors") or [{}]
        return errors[0].get("code") == 11000 and "idem" in (errors[0].get("keyPattern") or {})
    return isinstance(exc, DuplicateKeyError) and "idem" in ((exc.details or {}).get("keyPattern") or {})


def stored_under(key: RequestKey, count: int) -> tuple[list[dict[str, Any]], bool]:
    """The notifications stored under ``key`` in request order, and whether they were
    published (no outbox marker lists them); 409 if the key came with another body."""
    coll = notifications_collection()
    names = key.names(count)
    found = {doc["idem"]: doc for doc in coll.find({"idem": {"$in": names}})}
    first = found.get(names[0])
    if first is None:
        # Taken a moment ago, gone now: the batch that stored it removed its part to store it
        # again without a neighbour MongoDB refused (app/store/inserting.py). Soon back.
        raise ApiError(
            503, "unavailable", "the notifications of this Idempotency-Key are being stored, retry"
        )
    if first.get("idem_hash") != key.body_hash:
        raise ApiError(409, "idempotency_conflict", "Idempotency-Key was already used with a different body")
    docs = [found[name] for name in names if name in found]  # all, unless a crash cut the insert
    return docs, not still_marked(docs)
