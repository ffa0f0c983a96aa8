"""Browsers' push subscriptions, one document per endpoint, in ``push_subscriptions``.

The document id is the SHA-256 of the endpoint: a browser that subscribes again (or whose
next user signs in) replaces its entry instead of adding one, and the index on
``user_id`` serves the send-time lookup. A user keeps at most
``PUSH_MAX_SUBSCRIPTIONS_PER_USER``, the newest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from mongoengine import DateTimeField, Document, StringField

from app.errors import FieldInvalid
from app.push.endpoints import EndpointRefused, check_endpoint
from app.push.vapid import b64url_decode
from app.store.models import id_chunks

FIELDS = frozenset({"endpoint", "keys", "expirationTime"})
KEY_FIELDS = frozenset({"p256dh", "auth"})


class PushSubscription(Document):
    id = StringField(primary_key=True)  # sha256(endpoint)
    user_id = StringField(required=True)
    endpoint = StringField(required=True)
    p256dh = StringField(required=True)
    auth = StringField(required=True)
    created_at = DateTimeField(required=True)

    # Made by the workers' index set-up (app/store/indexes.py), not by mongoengine on first
    # use: two makers race, and SecantusDB refuses one whose options differ (a 500).
    meta = {
        "collection": "push_subscriptions",
        "auto_create_index": False,
        "indexes": [{"fields": ["user_id", "-created_at"], "name": "user_newest"}],
    }


@dataclass(frozen=True)
class Subscription:
    id: str
    user_id: str
    endpoint: str
    p256dh: str
    auth: str

    def info(self) -> dict[str, Any]:
        """What pywebpush takes as ``subscription_info``."""
        return {"endpoint": self.endpoint, "keys": {"p256dh": self.p256dh, "auth": self.auth}}


def endpoint_id(endpoint: str) -> str:
    return hashlib.sha256(endpoint.encode()).hexdigest()


def _key(keys: dict[str, Any], name: str, size: int) -> str:
    value = keys.get(name)
    field = f"keys.{name}"
    if not isinstance(value, str) or len(value) > 128:
        raise FieldInvalid(field, "must be a base64url string")
    try:
        raw = b64url_decode(value)
    except ValueError:
        raise FieldInvalid(field, "must be base64url") from None
    if len(raw) != size:
        raise FieldInvalid(field, f"must encode {size} bytes")
    if name == "p256dh":
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
        except ValueError:
            raise FieldInvalid(field, "must be an uncompressed P-256 point") from None
    return value.rstrip("=")


def parse(user_id: str, body: dict[str, Any], allow_local: bool) -> Subscription:
    """A browser's ``PushSubscription.toJSON()``, checked; FieldInvalid names the field."""
    for name in body:
        if name not in FIELDS:
            raise FieldInvalid(name, "unknown field (allowed: endpoint, expirationTime, keys)")
    endpoint = body.get("endpoint")
    if not isinstance(endpoint, str):
        raise FieldInvalid("endpoint", "must be the subscription's https:// URL")
    try:
        check_endpoint(endpoint, allow_local)
    except EndpointRefused as exc:
        raise FieldInvalid("endpoint", str(exc)) from None
    expiration = body.get("expirationTime")
    if expiration is not None and (isinstance(expiration, bool) or not isinstance(expiration, (int, float))):
        raise FieldInvalid("expirationTime", "must be null or a time in milliseconds")
    keys = body.get("keys")
    if not isinstance(keys, dict):
        raise FieldInvalid("keys", "must be an object with p256dh and auth")
    for name in keys:
        if name not in KEY_FIELDS:
            raise FieldInvalid(f"keys.{name}", "unknown field (allowed: auth, p256dh)")
    p256dh, auth = _key(keys, "p256dh", 65), _key(keys, "auth", 16)
    return Subscription(endpoint_id(endpoint), user_id, endpoint, p256dh, auth)


def collection() -> Any:
    return PushSubscription._get_collection()


def save(subscription: Subscription, keep: int) -> None:
    """Store (or take over) the endpoint for its user; the user's oldest beyond ``keep`` go."""
    coll = collection()
    doc = {
        "user_id": subscription.user_id,
        "endpoint": subscription.endpoint,
        "p256dh": subscription.p256dh,
        "auth": subscription.auth,
        "created_at": datetime.now(timezone.utc),
    }
    coll.replace_one({"_id": subscription.id}, doc, upsert=True)
    extra = coll.find({"user_id": subscription.user_id}, {"_id": 1}).sort("created_at", -1).skip(keep)
    stale = [d["_id"] for d in extra]
    if stale:
        coll.delete_many({"_id": {"$in": stale}, "user_id": subscription.user_id})


def remove(user_id: str, endpoint: str) -> bool:
    return collection().delete_one({"_id": endpoint_id(endpoint), "user_id": user_id}).deleted_count > 0


def remove_id(subscription_id: str) -> None:
    collection().delete_one({"_id": subscription_id})


def for_user(user_id: str, limit: int) -> list[Subscription]:
    return for_users([user_id], limit).get(user_id, [])


def for_users(user_ids: list[str], limit: int) -> dict[str, list[Subscription]]:
    """The newest ``limit`` subscriptions of each user who has any: one query per chunk of
    users (a batch's users, most of whom never enabled push, cost one call, not one each)."""
    out: dict[str, list[Subscription]] = {}
    for chunk in id_chunks(sorted(set(user_ids))):
        for d in collection().find({"user_id": {"$in": chunk}}).sort("created_at", -1):
            mine = out.setdefault(d["user_id"], [])
            if len(mine) < limit:
                mine.append(Subscription(d["_id"], d["user_id"], d["endpoint"], d["p256dh"], d["auth"]))
    return out


def count(user_id: str) -> int:
    return collection().count_documents({"user_id": user_id})
