"""Changing a notification after it was created: update in place, cancel before it is sent.

An update (``PATCH /api/notifications/<id>``) changes the stored notification and, once it
has been sent, tells every open client of its user with an ``update`` event: kind ``u`` of
the publish script, so it takes the user's next cursor like every notification and state
change, lands in the replay list, and invalidates the user's cached pages and counts in
the same step. A notification still waiting for its ``send_at`` is only changed: it is
sent as it is when due.
"""

from __future__ import annotations

from typing import Any

import orjson
from bson import ObjectId
from pymongo import ReturnDocument

from app.errors import ApiError
from app.store import scheduling
from app.store.models import PUBLIC_PROJECTION, notifications_collection
from app.store.serialization import public_json, utc_now_ms

UPDATE = "u"  # the publish script's event kind (app/store/lua.py)


def update(oid: ObjectId, fields: dict[str, Any]) -> dict[str, Any]:
    """Store ``fields`` on the notification; its document as it is now. 404 if none."""
    change = {"$set": {**fields, "updated_at": utc_now_ms()}}
    doc = notifications_collection().find_one_and_update(
        {"_id": oid, "user_id": {"$lt": "~"}}, change, PUBLIC_PROJECTION, return_document=ReturnDocument.AFTER
    )
    if doc is None:
        raise ApiError(404, "not_found", "no such notification")
    return doc


def update_event(doc: dict[str, Any]) -> bytes | None:
    """The ``update`` event's body for clients, or None when no client has it (not sent
    yet, or deleted from the inbox)."""
    if doc.get("read") is None or doc.get("deleted_at") is not None:
        return None
    return orjson.dumps({"id": str(doc["_id"]), "notification": public_json(doc)})


def cancel(oid: ObjectId) -> None:
    """Cancel a scheduled notification that has not been sent: 404 / 409 otherwise."""
    outcome = scheduling.cancel(oid)
    if outcome == "missing":
        raise ApiError(404, "not_found", "no such notification")
    if outcome == "sent":
        raise ApiError(
            409,
            "already_sent",
            "the notification was sent already; to take it out of the user's inbox, "
            "DELETE /api/users/<user_id>/notifications/<id>",
        )
    if outcome == "sending":
        raise ApiError(409, "already_sent", "the notification is being sent now")
