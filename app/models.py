"""MongoDB documents: the source of truth for notifications and idempotent requests.

The hot paths (batched inserts, history pages, replay) go through the raw pymongo
collection of these documents to skip per-document object construction; the schema,
indexes and the rarer writes stay declared here.
"""

from __future__ import annotations

from datetime import datetime, timezone

from mongoengine import (
    BooleanField,
    DateTimeField,
    DictField,
    Document,
    IntField,
    StringField,
)
from pymongo.collection import Collection


class Notification(Document):
    """One notification for one user.

    ``seq`` is the user's stream cursor, proposed by the worker and stored with the
    document; the publish keeps it or replaces it (then writes the new one back), so every
    instance delivers a user's cursors in increasing order.
    ``outbox``, on the first document of each stored batch, is the batch's marker (lease,
    ids) until the batch is published; the relay publishes batches whose marker outlived
    its lease.
    """

    user_id = StringField(required=True, max_length=128)
    title = StringField(default="", max_length=200)
    message = StringField(required=True, max_length=4000)
    category = StringField(default="", max_length=64)
    data = DictField()
    created_at = DateTimeField(required=True)
    read = BooleanField(default=False)
    seq = IntField()
    outbox = DictField(default=None)

    meta = {
        "collection": "notifications",
        "auto_create_index": False,
        "indexes": [
            {"fields": ["user_id", "-id"], "name": "user_newest"},
            {"fields": ["user_id", "read"], "name": "user_unread"},
            {"fields": ["user_id", "seq"], "name": "user_seq"},
            {"fields": ["outbox.lease_until"], "name": "outbox_lease", "sparse": True},
        ],
    }


class IdempotencyRecord(Document):
    """The first response to a POST carrying an ``Idempotency-Key``, kept for 24 h.

    ``id`` is ``"<api key fingerprint>:<key>"`` so the unique primary key itself stops two
    concurrent first attempts from both creating notifications.
    """

    id = StringField(primary_key=True)
    body_hash = StringField(required=True)
    status = IntField()
    response = StringField()
    created_at = DateTimeField(required=True)

    meta = {
        "collection": "idempotency",
        "auto_create_index": False,
        "indexes": [{"fields": ["created_at"], "name": "idem_ttl", "expireAfterSeconds": 86400}],
    }


# Reads that answer with notifications leave out the outbox marker (and an older
# version's outbox fields): ``public_json`` picks the fields, this keeps the wire small.
PUBLIC_PROJECTION = {"outbox": 0, "published": 0, "lease_until": 0, "claim": 0}


def notifications_collection() -> Collection:
    return Notification._get_collection()


def adopt_legacy_unpublished(coll: Collection) -> int:
    """Give the relay what an older version left unpublished (``published: false`` and no
    batch marker): each becomes a batch of its own, due now. Returns how many.

    Their old ``lease_until`` field is left as it is: nothing reads it any more."""
    now = datetime.now(timezone.utc)
    legacy = {"published": False, "outbox": {"$exists": False}}
    ids = [d["_id"] for d in coll.find(legacy, {"_id": 1})]
    for oid in ids:
        marker = {"lease_until": now, "ids": [oid]}
        coll.update_one({"_id": oid, **legacy}, {"$set": {"outbox": marker}, "$unset": {"published": ""}})
    return len(ids)


def ensure_indexes(retention_seconds: int | None = None) -> None:
    """Create every index; safe to call repeatedly (start-up, CLI, tests).

    ``retention_seconds`` sets the TTL index on ``created_at`` (0 removes it; None leaves
    it as it is): see ``app/retention.py``.
    """
    coll = notifications_collection()
    for document in (Notification, IdempotencyRecord):
        document.ensure_indexes()
    if "outbox" in coll.index_information():  # (published, lease_until): an older version's
        adopt_legacy_unpublished(coll)  # uses that index, once, at the upgrade
        coll.drop_index("outbox")
    if retention_seconds is not None:
        from .retention import ensure_ttl_index

        ensure_ttl_index(notifications_collection(), retention_seconds)
