"""Retention: notifications older than ``RETENTION_DAYS`` are removed by MongoDB itself.

A TTL index on ``notifications.created_at`` lets the server's TTL monitor (a pass about
every 60 s) delete expired documents; nothing in the app has to run. Changing
``RETENTION_DAYS`` and running ``flask db create-indexes`` (or any ``ensure_indexes``
with a retention) adjusts the existing index in place with ``collMod``; 0 removes it and
keeps notifications forever. ``flask db prune --days N`` deletes older ones right away.

What follows from it: history only reaches back ``RETENTION_DAYS``, and so does replay.
A client resuming with a cursor whose notification has expired gets a ``reset`` event
(``app/replay.py``: the cursor names no event we still keep) and reloads its history.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import OperationFailure

TTL_FIELD = "created_at"
TTL_INDEX = "retention_ttl"
DAY = 86400


def retention_seconds(config: Any) -> int:
    """The TTL in seconds for ``config.RETENTION_DAYS`` (0: keep forever)."""
    days = int(config.RETENTION_DAYS)
    if days < 0:
        raise ValueError("RETENTION_DAYS must be 0 (keep forever) or a number of days")
    return days * DAY


def _ttl_index(collection: Collection) -> dict[str, Any] | None:
    for index in collection.list_indexes():
        if list(index["key"].items()) == [(TTL_FIELD, 1)]:
            return dict(index)
    return None


def ensure_ttl_index(collection: Collection, seconds: int) -> str:
    """Make the TTL on ``created_at`` equal ``seconds`` (0 drops it). Returns what it did."""
    current = _ttl_index(collection)
    if seconds <= 0:
        if current is not None and "expireAfterSeconds" in current:
            collection.drop_index(current["name"])
            return "dropped"
        return "unchanged"
    if current is None:
        collection.create_index([(TTL_FIELD, 1)], name=TTL_INDEX, expireAfterSeconds=seconds)
        return "created"
    if current.get("expireAfterSeconds") == seconds:
        return "unchanged"
    if "expireAfterSeconds" in current:
        try:
            collection.database.command(
                "collMod", collection.name, index={"name": current["name"], "expireAfterSeconds": seconds}
            )
            if _ttl_index(collection).get("expireAfterSeconds") == seconds:  # type: ignore[union-attr]
                return "modified"
        except OperationFailure:
            pass  # a server without collMod on indexes: rebuild it below
    collection.drop_index(current["name"])
    collection.create_index([(TTL_FIELD, 1)], name=TTL_INDEX, expireAfterSeconds=seconds)
    return "rebuilt"


def ttl_seconds(collection: Collection) -> int | None:
    """The TTL currently in force, or None when there is no TTL index."""
    index = _ttl_index(collection)
    return None if index is None else index.get("expireAfterSeconds")


def prune(collection: Collection, days: float, now: datetime | None = None) -> int:
    """Delete notifications created more than ``days`` ago; returns how many."""
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=days)
    return collection.delete_many({TTL_FIELD: {"$lt": cutoff}}).deleted_count
