"""What a stream missed: events after a cursor, from Redis first and MongoDB after.

Inbox state changes share the cursors and the Redis list; MongoDB keeps no events, only
the notifications as they are now, so a client resuming from older than the list gets
the notifications with their current state (and a cursor that names a state change the
list no longer holds gets a reset: the client reloads its inbox).

The publish script appends every event to a short per-user Redis list in the same atomic
step as the PUBLISH, so that list is exact for recent history. Older history comes from
MongoDB by ``seq``, leaving out batches still marked in the outbox: those are stored with
a proposed cursor but not yet published (or their cursor is being replaced), and will
reach the client live or from the Redis list with the cursor they are published with.
MongoDB answers only for what is older than the list's first event: a batch published
but still marked (its clean-up not done yet) is in the list, and must come from there,
unless later events pushed it out of the list already (a large batch the relay published
at once after an outage). So a caller that replays a gap it knows was published
(``settle``: the hub after a reconnect) asks again while documents of the range are still
marked, until their clean-up is done or ``settle`` seconds passed (a batch still marked
then is not published yet, and arrives live with the cursor it gets).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

import orjson
import redis
from pymongo.errors import PyMongoError

from app.delivery.events import NOTIFICATION, Event
from app.ops import metrics
from app.store.inbox import expired_json
from app.store.models import (
    EITHER_READ,
    PUBLIC_PROJECTION,
    notifications_collection,
    still_marked,
)
from app.store.serialization import iso, public_json, utc_now_ms

log = logging.getLogger(__name__)


class ReplayUnavailable(RuntimeError):
    """Neither Redis nor MongoDB could say what was missed."""


def events_after(
    service: Any, user_id: str, cursor: int, limit: int, strict: bool, settle_until: float = 0.0
) -> list[Event] | None:
    """Notifications of ``user_id`` with ``seq > cursor``, oldest first.

    Returns None when the client must reset: more than ``limit`` were missed, or (with
    ``strict``) the cursor names no event we still keep. ``cursor`` 0 means "from the start".
    Until ``settle_until`` (``time.monotonic()``), asks again while documents of the range
    are still marked in the outbox.
    """
    while True:
        events, marked = _events_after(service, user_id, cursor, limit, strict)
        if not marked or time.monotonic() >= settle_until:
            return events
        time.sleep(0.05)


def _events_after(
    service: Any, user_id: str, cursor: int, limit: int, strict: bool
) -> tuple[list[Event] | None, bool]:
    """The events, and whether documents of the range were left out as still marked."""
    recent, counter = _recent(service, user_id)
    now = utc_now_ms()
    if strict and counter is not None and cursor > counter:
        return None, False  # a cursor from the future: not one we issued
    if recent and recent[0][0] <= cursor:
        return [_event(user_id, seq, json) for seq, json in _unexpired(recent, now) if seq > cursor], False
    since = {"$gte" if strict and cursor else "$gt": cursor}
    query: dict[str, Any] = {"user_id": user_id, "read": EITHER_READ, "seq": since}
    try:
        docs = list(notifications_collection().find(query, PUBLIC_PROJECTION).sort("seq", 1).limit(limit + 2))
    except PyMongoError as exc:
        raise ReplayUnavailable(str(exc)) from exc
    if strict and cursor:
        if not docs or docs[0]["seq"] != cursor:
            return None, False  # older than what is kept, or never issued
        docs = docs[1:]
    if recent:  # the Redis list holds every event from its first one on: MongoDB only before it
        docs = [d for d in docs if d["seq"] < recent[0][0]]
    replayable = [d for d in docs if _replayable(d, now)]
    kept = _published_only(replayable)
    marked = len(kept) < len(replayable)
    events = [Event(NOTIFICATION, user_id, d["seq"], orjson.dumps(public_json(d))) for d in kept]
    events.extend(_event(user_id, seq, json) for seq, json in _unexpired(recent, now) if seq > cursor)
    return (None if len(events) > limit else events), marked


def _replayable(doc: dict[str, Any], now: datetime) -> bool:
    """Not deleted by the user, not expired, and not a scheduled one whose publish is under
    way (``due_at`` until it is published: it comes live or from the Redis list)."""
    expired = doc.get("expires_at") is not None and doc["expires_at"] <= now
    return doc.get("deleted_at") is None and doc.get("due_at") is None and not expired


def _unexpired(recent: list[tuple[int, bytes]], now: datetime) -> list[tuple[int, bytes]]:
    """The Redis list's events but the notifications past their ``expires_at`` (parsed only
    when the entry has one)."""
    now_iso = iso(now)
    return [
        (seq, json)
        for seq, json in recent
        if b'"expires_at":' not in json or json[:1] != b"{" or not expired_json(orjson.loads(json), now_iso)
    ]


def _published_only(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    try:
        pending = still_marked(docs)
    except PyMongoError as exc:
        raise ReplayUnavailable(str(exc)) from exc
    return [d for d in docs if d["_id"] not in pending] if pending else docs


def current_cursor(service: Any, user_id: str) -> int | None:
    try:
        value = service.redis.get(service.key("seq", user_id))
    except redis.RedisError:
        return None
    return int(value) if value is not None else None


def _recent(service: Any, user_id: str) -> tuple[list[tuple[int, bytes]], int | None]:
    try:
        pipe = service.redis.pipeline(transaction=False)
        pipe.lrange(service.key("replay", user_id), 0, -1)
        pipe.get(service.key("seq", user_id))
        items, counter = pipe.execute()
    except redis.RedisError as exc:
        metrics.redis_error("replay")
        log.warning("replay buffer unavailable, using MongoDB only: %s", exc)
        return [], None
    parsed = []
    for item in items:
        seq, _, json = item.partition(b"\t")
        parsed.append((int(seq), json))
    return parsed, int(counter) if counter is not None else None


def _event(user_id: str, seq: int, entry: bytes) -> Event:
    return Event.replayed(user_id, seq, entry)
