"""The ``api`` blueprint: JSON for services (API key) and for subscribers (``/api/me``)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, g, request

from app.access.tokens import mint_token, require_api_key, require_subscriber
from app.api import create
from app.api import validation as v
from app.store.notifications import NotificationService
from app.store.serialization import iso

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


@bp.get("/users/<user_id>/notifications")
@require_api_key
def user_history(user_id: str) -> Response:
    return _history(v.user_id(user_id))


@bp.get("/users/<user_id>/unread-count")
@require_api_key
def user_unread(user_id: str) -> Response:
    user_id = v.user_id(user_id)
    return json_response({"user_id": user_id, "unread": service().unread_count(user_id)})


@bp.post("/users/<user_id>/read")
@require_api_key
def user_mark_read(user_id: str) -> Response:
    return _mark_read(v.user_id(user_id))


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


@bp.get("/me/notifications")
@require_subscriber
def my_history() -> Response:
    return _history(g.subscriber.user_id)


@bp.get("/me/unread-count")
@require_subscriber
def my_unread() -> Response:
    user_id = g.subscriber.user_id
    return json_response({"user_id": user_id, "unread": service().unread_count(user_id)})


@bp.post("/me/read")
@require_subscriber
def my_mark_read() -> Response:
    return _mark_read(g.subscriber.user_id)


def _history(user_id: str) -> Response:
    limit = v.int_arg("limit", 50, 1, 100)
    before = v.single_arg("before") or None
    body, hit = service().history(user_id, limit, before, v.bool_arg("unread"))
    return json_response(body, **{"X-Cache": "HIT" if hit else "MISS"})


def _mark_read(user_id: str) -> Response:
    body = v.json_body()
    if body.get("all") is True and "ids" not in body:
        ids = None
    elif "ids" in body and "all" not in body:
        ids = body["ids"]
        if not isinstance(ids, list) or not 1 <= len(ids) <= 1000 or not all(isinstance(i, str) for i in ids):
            raise v.invalid("ids", "must be a list of 1-1000 notification ids")
    else:
        raise v.invalid("ids", 'send {"ids": [...]} or {"all": true}')
    return json_response({"updated": service().mark_read(user_id, ids)})
