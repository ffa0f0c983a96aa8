"""``POST /api/notifications``: the one create path, for the view and the lean path.

Both serve the request through ``create_notification``, so the rate limit, validation,
``Idempotency-Key`` and the response are the same whichever path takes it (the lean path,
``app/api/fastpath.py``, answers most POSTs; the view, ``app/api/views.py``, the rest).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from app.access.ratelimit import limiter
from app.api import validation as v
from app.extensions import RedisBudget
from app.store.idempotency import RequestKey
from app.store.serialization import utc_now_ms

FIELDS = frozenset({"user_id", "user_ids", "message", "title", "category", "data", "priority", "actions"})
TOPIC_FIELDS = FIELDS | {"topic"}
TIMING_FIELDS = frozenset({"send_at", "expires_at", "collapse_key"})  # scheduled, expiring, collapsing
REPLAYED = ("Idempotent-Replayed", "true")


def create_notification(
    extensions: dict[str, Any],
    owner: str,
    idempotency_key: str | None,
    read_body: Callable[[], tuple[dict[str, Any], bytes]],
) -> tuple[int, bytes, list[tuple[str, str]]]:
    """Count, validate, store and publish one create request: (status, body, headers).

    ``owner`` is the API key's id; ``read_body`` gives the JSON object and its raw bytes.
    The request waits for Redis (rate limit and publish together) at most
    ``PUBLISH_TIMEOUT_SECONDS``; past it, a stored notification answers 201 unpublished."""
    budget = RedisBudget(extensions["config"].PUBLISH_TIMEOUT_SECONDS)
    limiter(extensions).check_post(owner, budget)
    key = None if idempotency_key is None else v.idempotency_key(idempotency_key)
    body, raw = read_body()
    v.known_fields(body, TOPIC_FIELDS | TIMING_FIELDS)
    if "topic" in body:
        return publish_to_topic(extensions, owner, key, body, raw)
    if "user_id" in body and "user_ids" in body:
        raise v.invalid("user_ids", "send either user_id or user_ids, not both")
    users = v.user_ids(body["user_ids"]) if "user_ids" in body else [v.user_id(body.get("user_id"))]
    stored = extensions["notifications"].create(
        users,
        message=v.text(body, "message", 4000, required=True),
        title=v.text(body, "title", 200, required=False),
        category=v.text(body, "category", 64, required=False),
        data=v.data_object(body.get("data")),
        priority=v.priority(body.get("priority")),
        actions=v.actions(body.get("actions")),
        key=None if key is None else RequestKey.of(owner, key, raw),
        budget=budget,
        **_timing(body),
    )
    headers = [REPLAYED] if stored.replayed else []
    if "user_ids" in body:
        return 201, orjson.dumps({"notifications": stored.notifications}), headers
    return 201, orjson.dumps(stored.notifications[0]), headers


def publish_to_topic(
    extensions: dict[str, Any], owner: str, key: str | None, body: dict[str, Any], raw: bytes
) -> tuple[int, bytes, list[tuple[str, str]]]:
    """``"topic"`` instead of users: 202 with the fan-out, which every instance works on
    in the background (``app/topics/fanout.py``)."""
    if "user_id" in body or "user_ids" in body:
        raise v.invalid("topic", "send one of user_id, user_ids or topic")
    for field in sorted(TIMING_FIELDS & body.keys()):  # a fan-out is sent now, to each copy alike
        raise v.invalid(field, "not supported with topic: a fan-out is sent at once")
    topic = v.topic(body["topic"])
    content = v.notification_content(body)
    request_key = None if key is None else (key, raw)
    fanout, replayed = extensions["topics"].publish(owner, topic, content, request_key)
    headers = [("Location", f"/api/fanouts/{fanout['id']}"), *([REPLAYED] if replayed else [])]
    return 202, orjson.dumps(fanout), headers


def _timing(body: dict[str, Any]) -> dict[str, Any]:
    """``send_at`` (None: now), ``expires_at`` and ``collapse_key``, validated."""
    now = utc_now_ms()
    send_at = v.send_at(body.get("send_at"), now)
    return {
        "send_at": send_at,
        "expires_at": v.expires_at(body.get("expires_at"), now, send_at),
        "collapse_key": v.collapse_key(body.get("collapse_key")),
    }
