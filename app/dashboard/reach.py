"""What else reaches a user, for the user page: notifications scheduled for them and not
sent yet (``send_at``), and the browsers they receive Web Push in.

Both are read by the user's own index ranges (``user_read_seq`` with ``read: None`` for
what waits, ``(user_id, created_at)`` for push subscriptions), so the card costs the same
however much the collections hold."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pymongo.errors import PyMongoError

from app.push import subscriptions
from app.store.models import by_history_index, notifications_collection
from app.store.serialization import iso

SHOWN = 20


def reach(user_id: str) -> dict[str, Any]:
    """``{"scheduled": [...], "push": [...], "error"}``; a part that fails is empty, named in error."""
    view: dict[str, Any] = {"scheduled": [], "push": [], "error": None}
    try:
        view["scheduled"] = _scheduled(user_id)
        view["push"] = [
            {"service": urlsplit(s.endpoint).hostname or "?", "id": s.id}  # the endpoint is a secret
            for s in subscriptions.for_user(user_id, SHOWN)
        ]
    except PyMongoError:
        view["error"] = "MongoDB is unavailable: scheduled notifications and push browsers unknown."
    return view


def waiting_query(user_id: str) -> dict[str, Any]:
    """``seq`` None: what waits has no cursor yet; what the user's preferences hid (also
    ``read: None``) has one, so the range holds only what waits, however much is hidden."""
    return {"user_id": user_id, "read": None, "seq": None, "due_at": {"$ne": None}}


def _scheduled(user_id: str) -> list[dict[str, Any]]:
    query = waiting_query(user_id)
    projection = {"title": 1, "message": 1, "send_at": 1, "expires_at": 1, "category": 1}
    find = notifications_collection().find(query, projection).limit(SHOWN)
    docs = by_history_index(lambda index: list(find.clone().hint(index)))
    docs.sort(key=lambda d: d["send_at"])
    return [
        {
            "id": str(d["_id"]),
            "title": d.get("title") or "",
            "message": d.get("message") or "",
            "category": d.get("category") or "",
            "send_at": iso(d["send_at"]),
            "expires_at": iso(d["expires_at"]) if d.get("expires_at") else None,
        }
        for d in docs
    ]
