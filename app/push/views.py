"""``/api/me/push-key`` and ``/api/me/push-subscriptions``: a subscriber's browser signs up
for Web Push (subscriber token, like every ``/api/me`` endpoint)."""

from __future__ import annotations

import orjson
from flask import Blueprint, Response, current_app, g

from app.access.tokens import require_subscriber
from app.api import validation as v
from app.errors import ApiError, FieldInvalid
from app.push import subscriptions
from app.push.sender import PushSender

bp = Blueprint("push", __name__, url_prefix="/api/me")


def sender() -> PushSender:
    push = current_app.extensions.get("push")
    if push is None:
        raise ApiError(404, "push_disabled", "Web Push is not enabled on this service (PUSH_ENABLED)")
    return push


def _json(body: dict, status: int = 200) -> Response:
    return current_app.response_class(orjson.dumps(body), status=status, mimetype="application/json")


@bp.get("/push-key")
@require_subscriber
def push_key() -> Response:
    """The VAPID public key browsers subscribe with (``applicationServerKey``)."""
    return _json({"public_key": sender().keys.public_key})


@bp.post("/push-subscriptions")
@require_subscriber
def subscribe() -> Response:
    push = sender()
    try:
        subscription = subscriptions.parse(g.subscriber.user_id, v.json_body(), push.allow_local)
    except FieldInvalid as exc:
        raise v.invalid(exc.field, exc.message) from None
    subscriptions.save(subscription, push.config.PUSH_MAX_SUBSCRIPTIONS_PER_USER)
    return _json({"subscribed": True, "id": subscription.id}, 201)


@bp.delete("/push-subscriptions")
@require_subscriber
def unsubscribe() -> Response:
    sender()
    endpoint = v.json_body().get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise v.invalid("endpoint", "must be the subscription's endpoint URL")
    return _json({"removed": subscriptions.remove(g.subscriber.user_id, endpoint)})
