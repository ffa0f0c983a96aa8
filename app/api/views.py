"""The ``api`` blueprint: JSON for services (API key) and for subscribers (``/api/me``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import orjson
import redis
from flask import Blueprint, Response, current_app, g, request

from app.access.tokens import mint_token, require_api_key, require_subscriber
from app.api import create
from app.api import validation as v
from app.errors import ApiError
from app.store.notifications import NotificationService
from app.store.serialization import iso

ACK_FIELDS = frozenset({"ids", "connection"})
CONNECTION_RE = re.compile(r"[A-Za-z0-9_~-]{1,200}")
STATE_CHANGES = ("read", "seen", "unread", "archive", "unarchive")  # POST .../<change> {"ids"} | {"all"}

bp = Blueprint("api", __name__, url_prefix="/api")


def service() -> NotificationService:
    return current_app.extensions["notifications"]


def json_response(body: bytes | dict[str, Any], status: int = 200, **headers: str) -> Response:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    resp = Response(data, status=status, mimetype="application/json")
    resp.headers.update(headers)
    return resp


@bp.post("/notifications")
@require_api_key
def create_notification() -> Response:
    status, data, headers = create.create_notification(
        current_app.extensions,
        g.api_key_id,
        request.headers.get("Idempotency-Key"),
        lambda: (v.json_body(), request.get_data()),
    )
    return json_response(data, status, **dict(headers))


@bp.get("/notifications/<notification_id>")
@require_api_key
def notification_trace(notification_id: str) -> Response:
    return json_response(service().traced(notification_id))


@bp.patch("/notifications/<notification_id>")
@require_api_key
def update_notification(notification_id: str) -> Response:
    """Change a notification in place; its user's open clients get an ``update`` event."""
    return json_response(service().update(notification_id, v.update_fields(v.json_body())))


@bp.delete("/notifications/<notification_id>")
@require_api_key
def cancel_notification(notification_id: str) -> Response:
    """Cancel a scheduled notification before it is sent (409 once it was)."""
    service().cancel(notification_id)
    return json_response({"cancelled": notification_id})


@bp.post("/me/ack")
@require_subscriber
def my_ack() -> Response:
    """Receipts of a client that cannot answer on its stream (SSE): ``{"ids", "connection"?}``."""
    body = v.json_body()
    v.known_fields(body, ACK_FIELDS)
    connection = body.get("connection")
    if connection is not None and not (isinstance(connection, str) and CONNECTION_RE.fullmatch(connection)):
        raise v.invalid("connection", "must be the id of the stream's `connected` event")
    ids = v.id_list(body.get("ids"))
    return json_response({"acked": service().acknowledge(g.subscriber.user_id, ids, connection or "http")})


def _for_user(user_id: str) -> str:
    return v.user_id(user_id)


def _for_me() -> str:
    return g.subscriber.user_id


def _history(user_id: str) -> Response:
    limit = v.int_arg("limit", 50, 1, 100)
    before = v.single_arg("before") or None
    category = v.single_arg("category")
    if category is not None and len(category) > 64:
        raise v.invalid("category", "must be at most 64 characters")
    body, hit = service().history(user_id, limit, before, v.state_arg(), category, v.bool_arg("unread"))
    return json_response(body, **{"X-Cache": "HIT" if hit else "MISS"})


def _unread(user_id: str) -> Response:
    return json_response({"user_id": user_id, "unread": service().unread_count(user_id)})


def _counts(user_id: str) -> Response:
    return json_response(service().counts(user_id))


def _delete(user_id: str, notification_id: str) -> Response:
    service().delete(user_id, notification_id)
    return json_response({"deleted": notification_id})


def _changer(change: str) -> Callable[[str], Response]:
    def apply(user_id: str) -> Response:
        ids = v.id_selection(v.json_body())
        return json_response({"updated": service().change(user_id, change, ids)})

    return apply


def _route(rule: str, name: str, action: Callable[..., Response], method: str) -> None:
    """``action`` for a service (``/users/<user_id>...``, API key) and for the subscriber
    (``/me...``, token): one behaviour, two ways to name the user."""

    def for_user(user_id: str, **kwargs: str) -> Response:
        return action(_for_user(user_id), **kwargs)

    def for_me(**kwargs: str) -> Response:
        return action(_for_me(), **kwargs)

    bp.add_url_rule("/users/<user_id>" + rule, "user_" + name, require_api_key(for_user), methods=[method])
    bp.add_url_rule("/me" + rule, "my_" + name, require_subscriber(for_me), methods=[method])


_route("/notifications", "history", _history, "GET")
_route("/unread-count", "unread", _unread, "GET")
_route("/counts", "counts", _counts, "GET")
_route("/notifications/<notification_id>", "delete", _delete, "DELETE")
for _change in STATE_CHANGES:
    _route("/" + _change, "mark_" + _change, _changer(_change), "POST")


@bp.get("/users/<user_id>/presence")
@require_api_key
def user_presence(user_id: str) -> Response:
    """Whether the user is connected now, each open connection, and when last seen."""
    try:
        return json_response(current_app.extensions["presence"].user_presence(v.user_id(user_id)))
    except redis.RedisError as exc:
        raise ApiError(503, "unavailable", "presence is unavailable right now, retry") from exc


@bp.get("/recent")
@require_api_key
def recent() -> Response:
    return json_response(service().recent())


@bp.post("/tokens")
@require_api_key
def create_token() -> Response:
    body = v.json_body()
    config = current_app.extensions["config"]
    user_id = v.user_id(body.get("user_id"))
    ttl = body.get("ttl_seconds", config.TOKEN_TTL_SECONDS)
    if isinstance(ttl, float) and ttl.is_integer():
        ttl = int(ttl)  # JSON has one number type: 60.0 is the integer 60
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= config.TOKEN_MAX_TTL_SECONDS:
        raise v.invalid("ttl_seconds", f"must be an integer from 1 to {config.TOKEN_MAX_TTL_SECONDS}")
    token, expires_at = mint_token(user_id, ttl)
    expires = iso(datetime.fromtimestamp(expires_at, timezone.utc))
    return json_response({"token": token, "user_id": user_id, "expires_at": expires}, 201)


# -- topics (app/topics/) ---------------------------------------------------------------
TOPIC_FIELDS = frozenset({"user_ids"})


def topics() -> Any:
    return current_app.extensions["topics"]


def _topic_users(topic: str) -> tuple[str, list[str]]:
    """The path's topic and the body's ``{"user_ids": [...]}``, validated."""
    topic = v.topic(topic)
    body = v.json_body()
    v.known_fields(body, TOPIC_FIELDS)
    return topic, v.user_ids(body.get("user_ids"))


@bp.put("/topics/<topic>/subscribers")
@require_api_key
def subscribe(topic: str) -> Response:
    topic, users = _topic_users(topic)
    return json_response({"topic": topic, "subscribed": topics().subscribers.subscribe(topic, users)})


@bp.delete("/topics/<topic>/subscribers")
@require_api_key
def unsubscribe(topic: str) -> Response:
    topic, users = _topic_users(topic)
    return json_response({"topic": topic, "unsubscribed": topics().subscribers.unsubscribe(topic, users)})


@bp.get("/topics/<topic>/subscribers")
@require_api_key
def subscribers(topic: str) -> Response:
    topic = v.topic(topic)
    after = v.single_arg("after")
    after = "" if not after else v.user_id(after, "after")
    limit = v.int_arg("limit", 100, 1, v.MAX_TOPIC_PAGE)
    return json_response(topics().subscribers.listed(topic, after, limit))


@bp.get("/fanouts/<fanout_id>")
@require_api_key
def fanout(fanout_id: str) -> Response:
    return json_response(topics().fanouts.get(fanout_id))
