"""How a stored notification looks on the wire, in one place.

``public_json`` turns a raw MongoDB document into the API's notification object, with
keys in a fixed order; the Lua publish script splices the cursor in as ``seq``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from bson import ObjectId


def utc_now_ms() -> datetime:
    """Now, truncated to milliseconds: what MongoDB stores, so responses match reads."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@lru_cache(maxsize=256)
def iso(dt: datetime) -> str:
    """ISO 8601 in UTC with milliseconds. Cached: a batch's notifications share one time."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    dt = dt.astimezone(timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def iso_ms(ms: int | None) -> str | None:
    """A time in milliseconds since the epoch as ``iso`` writes it (None stays None)."""
    if ms is None:
        return None
    dt = datetime.fromtimestamp(ms / 1000, timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def new_document(
    user_id: str,
    message: str,
    title: str,
    category: str,
    data: dict[str, Any],
    created_at: datetime,
    priority: str = "normal",
    actions: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """A raw notification document; the publisher gives it its cursor.

    The inbox states (``seen_at``, ``read_at``, ``archived_at``, ``deleted_at``) are absent
    until they happen: a query for ``None`` matches a missing field, so older documents
    need no migration."""
    doc = {
        "_id": ObjectId(),
        "user_id": user_id,
        "title": title,
        "message": message,
        "category": category,
        "data": data,
        "created_at": created_at,
        "read": False,
        "seq": None,
        "priority": priority,
        "actions": actions or [],
    }
    return doc


# Fields a notification has only when its sender set them (scheduled, expiring, collapsing,
# replacing an older one) or its user's preferences hid it (``hidden``, app/store/publishing.py):
# left out otherwise, so the common notification stays as small.
OPTIONAL_TIMES = ("send_at", "expires_at", "updated_at")
OPTIONAL_TEXTS = ("collapse_key", "replaces", "hidden")


def public_json(doc: dict[str, Any]) -> dict[str, Any]:
    body = _public_fields(doc)
    for name in OPTIONAL_TIMES:
        if doc.get(name) is not None:
            body[name] = iso(doc[name])
    for name in OPTIONAL_TEXTS:
        if doc.get(name):
            body[name] = doc[name]
    return body


def _public_fields(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(doc["_id"]),
        "seq": doc.get("seq"),
        "user_id": doc["user_id"],
        "title": doc.get("title", ""),
        "message": doc["message"],
        "category": doc.get("category", ""),
        "data": doc.get("data") or {},
        "created_at": iso(doc["created_at"]),
        "read": bool(doc.get("read", False)),
        "seen": bool(doc.get("read") or doc.get("seen_at")),  # reading it is seeing it
        "archived": doc.get("archived_at") is not None,
        "priority": doc.get("priority") or "normal",
        "actions": doc.get("actions") or [],
    }
