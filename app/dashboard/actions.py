"""What staff do to users and keys from the console, each action in the audit log.

A test send, marking read, closing one of a user's connections, creating and revoking an
API key: each is done here and recorded (``app/dashboard/audit.py``) under the staff
member's name. Closing a connection is a command published on the user's channel
(``app/delivery/hub.py``): every worker holding a stream of that user reads it, and the
one holding that connection ends it (SSE: a last ``disconnected`` event; WebSocket: close
code 4000), then writes its presence snapshot at once.
"""

from __future__ import annotations

import time
from typing import Any

import gevent
import orjson
import redis
from pymongo.errors import PyMongoError

from app.access import apikeys
from app.api import validation as v
from app.dashboard import audit
from app.delivery.events import DISCONNECT, Event
from app.delivery.presence import Presence
from app.errors import ApiError
from app.store.notifications import NotificationService
from app.store.serialization import iso

CLOSE_WAIT_SECONDS = 2.0  # how long a disconnect waits to see the connection leave presence


class StaffActions:
    def __init__(self, notifications: NotificationService, presence: Presence, checker: Any) -> None:
        self.notifications = notifications
        self.presence = presence
        self.checker = checker  # app/access/apikeys.py: forgets a revoked key at once

    # -- users ---------------------------------------------------------------------------
    def send_test(self, staff: str, user_id: str, message: str, title: str) -> dict[str, Any]:
        """A test notification, marked in its trace as sent by ``staff``."""
        stored = self.notifications.create(
            [user_id], message=message, title=title, category="test", sent_by=staff
        )
        note = stored.notifications[0]
        _record(staff, "test_send", user_id, notification=note["id"], title=title)
        return {"notification": note, "published": stored.published}

    def mark_read(self, staff: str, user_id: str, ids: list[str] | None) -> dict[str, Any]:
        updated = self.notifications.change(user_id, "read", ids)
        _record(staff, "mark_read", user_id, ids=ids if ids is not None else "all", updated=updated)
        return {"updated": updated, "unread": self.notifications.unread_count(user_id)}

    def disconnect(self, staff: str, user_id: str, connection: str) -> bool:
        """Close one open connection of the user wherever it is; True once it is gone from
        presence (False: asked, not confirmed within ``CLOSE_WAIT_SECONDS``). 404 if the
        user has no such connection."""
        if not self._open(user_id, connection):
            raise ApiError(404, "not_found", "the user has no such open connection", field="connection")
        command = Event(DISCONNECT, user_id, None, orjson.dumps({"connection": connection}))
        self.notifications.publish_to_user(user_id, command.to_wire())
        _record(staff, "disconnect", user_id, connection=connection)
        deadline = time.monotonic() + CLOSE_WAIT_SECONDS
        while time.monotonic() < deadline:
            gevent.sleep(0.05)
            if not self._open(user_id, connection):
                return True
        return False

    def connections(self, user_id: str) -> dict[str, Any]:
        """The user's presence for the user page; with ``error`` set when Redis is away."""
        try:
            return {**self.presence.user_presence(user_id), "error": None}
        except redis.RedisError:
            error = "Redis is unavailable: open connections cannot be listed."
            return {"user_id": user_id, "online": None, "connections": [], "last_seen": None, "error": error}

    def _open(self, user_id: str, connection: str) -> bool:
        return any(c["id"] == connection for c in self.presence.user_presence(user_id)["connections"])

    # -- API keys ------------------------------------------------------------------------
    def keys(self) -> list[dict[str, Any]]:
        """Every key kept in MongoDB, oldest first (``API_KEYS`` from the environment are not)."""
        return [
            {
                "id": str(k.id),
                "name": k.name,
                "hint": k.hint,
                "created_at": iso(k.created_at),
                "last_used": iso(k.last_used) if k.last_used else None,
                "revoked_at": iso(k.revoked_at) if k.revoked else None,
            }
            for k in _guarded(apikeys.list_keys)
        ]

    def create_key(self, staff: str, name: str) -> apikeys.Created:
        """A new key; its secret is in the result only (stored as a hash)."""
        try:
            created = _guarded(apikeys.create_key, name)
        except apikeys.ApiKeyProblem as exc:
            raise ApiError(422, "invalid_field", f"name: {exc}", field="name") from None
        _record(staff, "api_key_create", created.record.name, key=str(created.record.id))
        return created

    def revoke_key(self, staff: str, key_id: str) -> apikeys.ApiKey:
        try:
            record = _guarded(apikeys.find_key, key_id)
        except apikeys.ApiKeyProblem as exc:
            raise ApiError(404, "not_found", str(exc)) from None
        if record.revoked:
            return record
        record = _guarded(apikeys.revoke_key, key_id, self.checker)
        _record(staff, "api_key_revoke", record.name, key=str(record.id))
        return record

    # -- audit ---------------------------------------------------------------------------
    def audit(self, target: str | None = None) -> list[dict[str, Any]]:
        return _guarded(audit.entries, target)


def page_user(raw: str) -> str:
    """A user id from a console URL: a 404, not a 422, for one that cannot be a user's."""
    try:
        return v.user_id(raw)
    except ApiError:
        raise ApiError(404, "not_found", f"{raw!r} is not a valid user id", field="user_id") from None


def _record(staff: str, action: str, target: str, **detail: Any) -> None:
    _guarded(audit.record, staff, action, target, **detail)


def _guarded(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except PyMongoError as exc:
        raise ApiError(503, "unavailable", "the console's store (MongoDB) is unavailable, retry") from exc
