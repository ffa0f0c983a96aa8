"""What the dashboard shows, computed in one place: the views only render it.

Notification rates come from per-second counters the publish script increments
(``{all}:stats:<unix second>``, Redis server time, kept an hour); connections and online users
come from the per-worker presence snapshots (app/delivery/presence.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from pymongo.errors import PyMongoError

from app.dashboard.history import History, HistoryPage
from app.delivery.presence import Presence
from app.errors import ApiError
from app.preferences import store as preferences_store
from app.store.models import notifications_collection
from app.store.notifications import NotificationService

log = logging.getLogger(__name__)

CHART_SECONDS = 120
HISTORY_ARGS = ("state", "category", "from", "to", "q", "id", "before", "after", "at")
HOUR = 3600


@dataclass
class UserView:
    user_id: str
    notifications: list[dict[str, Any]]
    has_more: bool
    from_cache: bool
    cached: bool
    ttl_seconds: int | None
    unread: int | None
    connections: int | None
    error: str | None = None
    preferences: dict[str, Any] | None = None  # None: the store could not be read


class DashboardService:
    def __init__(self, notifications: NotificationService, presence: Presence) -> None:
        self.notifications = notifications
        self.presence = presence
        self.redis: redis.Redis = notifications.redis
        self.prefix = notifications.prefix
        self._overview: tuple[float, dict[str, Any]] | None = None

    # -- overview --------------------------------------------------------------------
    def overview(self) -> dict[str, Any]:
        """Connections, online users and notification rates; shared for a second per worker."""
        now = time.monotonic()
        if self._overview is not None and now - self._overview[0] < 1.0:
            return self._overview[1]
        data: dict[str, Any] = {"error": None}
        try:
            summary = self.presence.summary()
            data.update(
                workers=summary.workers, connections=summary.connections, online_users=summary.online_users
            )
            data.update(self.rates())
        except redis.RedisError as exc:
            log.warning("dashboard overview: Redis unavailable: %s", exc)
            data.update(workers=None, connections=None, online_users=None, last_minute=None, last_hour=None)
            data.update(series=[], now=None, error="Redis is unavailable: live figures cannot be shown.")
        self._overview = (now, data)
        return data

    def rates(self) -> dict[str, Any]:
        """Per-second counts of the last hour, read with one MGET (Redis clock)."""
        sec, _ = self.redis.time()
        keys = [f"{self.prefix}{{all}}:stats:{s}" for s in range(sec - HOUR + 1, sec + 1)]
        counts = [int(v) if v is not None else 0 for v in self.redis.mget(keys)]
        return {
            "now": sec,
            "last_minute": sum(counts[-60:]),
            "last_hour": sum(counts),
            "series": counts[-CHART_SECONDS:],
        }

    def recent(self) -> list[dict[str, Any]]:
        return orjson.loads(self.notifications.recent())["notifications"]

    # -- one user --------------------------------------------------------------------
    def user_view(self, user_id: str, limit: int = 50) -> UserView:
        """The user's first history page as the user is served it, and its cache state."""
        body, hit = self.notifications.history(user_id, limit)
        page = orjson.loads(body)
        status = self.user_status(user_id, limit)
        return UserView(
            user_id=user_id,
            notifications=page["notifications"],
            has_more=page["next"] is not None,
            from_cache=hit,
            cached=status["cache"]["cached"],
            ttl_seconds=status["cache"]["ttl"],
            unread=status["unread"],
            connections=status["connections"],
            error=status["error"],
            preferences=_preferences(user_id),
        )

    # -- one user's history (support console) ------------------------------------------
    def history_page(self, user_id: str, args: Mapping[str, str], view: UserView) -> HistoryPage:
        """The history page the query string asks for. Without filters or a cursor it is
        ``view``'s page: the user's first inbox page as they are served it (and cached)."""
        if any(args.get(name, "").strip() for name in HISTORY_ARGS):
            return History().page(user_id, args)
        older = view.notifications[-1]["id"] if view.has_more and view.notifications else None
        return HistoryPage(notifications=view.notifications, older=older, from_cache=view.from_cache)

    def notification_owner(self, notification_id: str) -> str | None:
        """The user a notification id belongs to, for any user; None if there is none."""
        doc = History().find(notification_id)
        return None if doc is None else doc["user_id"]

    def user_status(self, user_id: str, limit: int = 50) -> dict[str, Any]:
        """Cache state, unread count and open connections; a part that fails is None."""
        cache = self.notifications.cache_status(user_id, limit)
        errors = []
        try:
            unread: int | None = self.notifications.unread_count(user_id)
        except ApiError as exc:
            unread, _ = None, errors.append(exc.message)
        try:
            connections: int | None = self.presence.user_connections(user_id)
        except redis.RedisError:
            connections, _ = None, errors.append("Redis is unavailable: online status unknown.")
        return {
            "user_id": user_id,
            "cache": {"cached": cache.cached, "ttl": cache.ttl_seconds},
            "unread": unread,
            "connections": connections,
            "online": bool(connections),
            "error": " ".join(errors) or None,
        }

    def trace(self, notification_id: str) -> dict[str, Any]:
        """A notification, its delivery record and the record in plain words."""
        traced = self.notifications.traced(notification_id)
        return {**traced, "verdict": verdict(traced["delivery"])}

    def search(self, prefix: str, limit: int = 20) -> list[str]:
        """User ids that start with ``prefix`` (a valid user id), sorted.

        The prefix is a range on ``user_id``, which the ``(user_id, read, seq)`` index
        serves on the dev server too; it plans a ``$regex`` (or a ``$ne`` beside the range)
        as a whole-collection scan. A valid id has no "~", so the range never holds the
        outbox markers (``MARKERS``: every id from "~" on)."""
        following = prefix[:-1] + chr(ord(prefix[-1]) + 1)  # after every id starting with prefix
        try:
            rows = notifications_collection().aggregate(
                [
                    {"$match": {"user_id": {"$gte": prefix, "$lt": following}}},
                    {"$limit": 20000},  # bounds the work for a short, common prefix
                    {"$group": {"_id": "$user_id"}},
                    {"$sort": {"_id": 1}},
                    {"$limit": limit},
                ]
            )
            return [row["_id"] for row in rows]
        except PyMongoError as exc:
            raise ApiError(503, "unavailable", "the notification store is unavailable, retry later") from exc


def _preferences(user_id: str) -> dict[str, Any] | None:
    """The user's preferences as the API shows them; None if MongoDB cannot say."""
    try:
        return preferences_store.load(user_id).to_json()
    except PyMongoError as exc:
        log.warning("preferences of %s unreadable for the dashboard: %s", user_id, exc)
        return None


def _clock(iso_time: str) -> str:
    return iso_time[11:19]  # HH:MM:SS of an ISO 8601 UTC time


def verdict(delivery: dict[str, Any]) -> str:
    """``received by 2 of 3 connections at 10:42:01; not yet read`` (times UTC)."""
    sent = delivery["sent"]
    if delivery["published_at"] is None and not sent:
        parts = ["stored, not yet published (or its record is not in yet)"]
    elif not sent:
        parts = ["published at " + _clock(delivery["published_at"]) + "; no open connection received it"]
    else:
        got = [s for s in sent if s["received_at"]]
        noun = "connection" if len(sent) == 1 else "connections"
        if got:
            parts = [f"received by {len(got)} of {len(sent)} {noun} at {_clock(delivery['received_at'])}"]
        elif delivery["received_at"]:
            parts = [f"sent to {len(sent)} {noun}; received at {_clock(delivery['received_at'])}"]
        else:
            parts = [f"sent to {len(sent)} {noun}, no receipt yet"]
    if delivery["read_at"]:
        parts.append("read at " + _clock(delivery["read_at"]))
    elif delivery["seen_at"]:
        parts.append("seen at " + _clock(delivery["seen_at"]) + ", not yet read")
    else:
        parts.append("not yet read")
    if delivery["archived_at"]:
        parts.append("archived at " + _clock(delivery["archived_at"]))
    return "; ".join(parts)
