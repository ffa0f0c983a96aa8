"""The inbox states as MongoDB queries: what each change matches and sets, what each
listing and count selects.

The states live on the notification itself (``seen_at``, ``read`` and ``read_at``,
``archived_at``, ``deleted_at``; absent until they happen, and a query for ``None`` matches
a missing field). Every query names the read state, so MongoDB walks the one
``user_read_seq`` index (``app/store/models.py``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bson import ObjectId

from app.store.models import EITHER_READ, id_chunks

NOW = object()  # in CHANGES: the time of the change
# What each change matches (besides the user's, not deleted) and sets.
CHANGES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "seen": ({"read": False, "seen_at": None}, {"$set": {"seen_at": NOW}}),
    "read": ({"read": False}, {"$set": {"read": True, "read_at": NOW}}),
    "unread": ({"read": True}, {"$set": {"read": False, "read_at": None}}),
    "archive": ({"read": EITHER_READ, "archived_at": None}, {"$set": {"archived_at": NOW}}),
    "unarchive": ({"read": EITHER_READ, "archived_at": {"$ne": None}}, {"$set": {"archived_at": None}}),
    "delete": ({"read": EITHER_READ}, {"$set": {"deleted_at": NOW}}),
}
INBOX = {"archived_at": None, "deleted_at": None}
STATE_QUERIES: dict[str | None, dict[str, Any]] = {
    None: {"read": EITHER_READ, **INBOX},
    "unread": {"read": False, **INBOX},
    "read": {"read": True, **INBOX},
    "archived": {"read": EITHER_READ, "archived_at": {"$ne": None}, "deleted_at": None},
}
# A notification read is seen (``public_json``): unseen are the unread never seen.
COUNT_QUERIES = {
    "unseen": {"read": False, "seen_at": None, **INBOX},
    "unread": {"read": False, **INBOX},
    "total": {"read": EITHER_READ, **INBOX},
}


def by_ids(query: dict[str, Any], oids: list[ObjectId] | None) -> list[dict[str, Any]]:
    """``query``, or one query per chunk of ``oids`` (``MAX_IDS_PER_CALL``)."""
    return [query] if oids is None else [{**query, "_id": {"$in": c}} for c in id_chunks(oids)]


def unexpired(now: datetime) -> dict[str, Any]:
    """What has not passed its ``expires_at`` at ``now`` (most have none)."""
    return {"$or": [{"expires_at": None}, {"expires_at": {"$gt": now}}]}


def expired_json(note: dict[str, Any], now_iso: str) -> bool:
    """Whether a notification as published (its JSON) has expired: ISO times in UTC with
    milliseconds (``serialization.iso``) compare as strings."""
    expires = note.get("expires_at")
    return expires is not None and expires <= now_iso
