"""``/api/me/preferences`` (subscriber token) and ``/api/users/<id>/preferences`` (API key)."""

from __future__ import annotations

import orjson
from flask import Blueprint, Response, current_app, g

from app.access.tokens import require_api_key, require_subscriber
from app.api import validation as v
from app.preferences import PreferenceService

bp = Blueprint("preferences", __name__, url_prefix="/api")


def service() -> PreferenceService:
    return current_app.extensions["preferences"]


def _json(body: dict) -> Response:
    return current_app.response_class(orjson.dumps(body), mimetype="application/json")


@bp.get("/me/preferences")
@require_subscriber
def my_preferences() -> Response:
    return _json(service().read(g.subscriber.user_id))


@bp.put("/me/preferences")
@require_subscriber
def set_my_preferences() -> Response:
    return _json(service().replace(g.subscriber.user_id, v.json_body()))


@bp.get("/users/<user_id>/preferences")
@require_api_key
def user_preferences(user_id: str) -> Response:
    return _json(service().read(v.user_id(user_id)))


@bp.put("/users/<user_id>/preferences")
@require_api_key
def set_user_preferences(user_id: str) -> Response:
    return _json(service().replace(v.user_id(user_id), v.json_body()))
