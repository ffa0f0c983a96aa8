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
    ListField,
    ObjectIdField,
    StringField,
)
from pymongo.collection import Collection


class Notification(Document):
    """One notification for one user.

    ``seq`` is the user's stream cursor, proposed by the worker and stored with the
    document; the publish keeps it or replaces it (then writes the new one back), so every
    instance delivers a user's cursors in increasing order.

    One secondary index, ``(user_id, read, seq)``: unread counts and mark-read use its
    prefix; history pages and replay walk it in ``seq`` order through both read states
    (``EITHER_READ``). On the dev server every index costs about as much per insert as the
    document itself (``bench/README.md``, "The store step").
    """

    user_id = StringField(required=True, max_length=128)
    title = StringField(default="", max_length=200)
    message = StringField(required=True, max_length=4000)
    category = StringField(default="", max_length=64)
    data = DictField()
    created_at = DateTimeField(required=True)
    read = BooleanField(default=False)
    seq = IntField()

    meta = {
        "collection": "notifications",
        "auto_create_index": False,
        "strict": False,  # an older version's outbox fields may still be on a document
        "indexes": [{"fields": ["user_id", "read", "seq"], "name": "user_read_seq"}],
    }


# A query on a user's notifications in ``seq`` order names both read states, so MongoDB
# reads the ``user_read_seq`` index as two ranges merged in cursor order ("explode for
# sort") instead of sorting every notification of the user.
EITHER_READ = {"$in": [False, True]}


class OutboxBatch(Document):
    """A stored batch not yet recorded as published: its lease and its notifications' ids.

    Inserted before the batch's notifications, so it exists whenever any of them does; it
    is deleted once the batch is published (``app/publishing.py``). The collection holds
    only batches in flight, a handful at a time, more while Redis is down. ``id`` is the
    batch's first notification's id.
    """

    id = ObjectIdField(primary_key=True)
    lease_until = DateTimeField(required=True)
    ids = ListField(ObjectIdField())
    claim = StringField()

    meta = {
        "collection": "outbox",
        "auto_create_index": False,
        "indexes": [{"fields": ["lease_until"], "name": "outbox_due"}],
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


def outbox_collection() -> Collection:
    return OutboxBatch._get_collection()


def adopt_legacy_unpublished(coll: Collection) -> int:
    """Hand the relay what older versions left unpublished; returns how many notifications.

    Two older layouts: ``published: false`` with a lease per document (each becomes a
    batch of its own), and a batch marker in the first document's ``outbox`` field. Both
    become outbox batches due now; their old fields are removed."""
    now = datetime.now(timezone.utc)
    outbox, adopted = outbox_collection(), 0
    for doc in coll.find({"$or": [{"published": False}, {"outbox": {"$exists": True}}]}, {"outbox": 1}):
        ids = doc["outbox"]["ids"] if doc.get("outbox") else [doc["_id"]]
        marker = {"lease_until": now, "ids": ids}
        outbox.update_one({"_id": doc["_id"]}, {"$setOnInsert": marker}, upsert=True)
        coll.update_one({"_id": doc["_id"]}, {"$unset": {"outbox": "", "published": ""}})
        adopted += len(ids)
    return adopted


# What older versions created on notifications (dropped by ensure_indexes once it has run).
LEGACY_INDEXES = ("outbox", "outbox_lease", "user_newest", "user_unread", "user_seq")


def ensure_indexes() -> None:
    """Create every index and upgrade what older versions left; safe to call repeatedly.

    Retention needs no index: ``app/retention.py`` deletes by ``_id`` range, so an older
    version's TTL index on ``created_at`` is dropped here."""
    coll = notifications_collection()
    for document in (Notification, OutboxBatch, IdempotencyRecord):
        document.ensure_indexes()
    legacy = [name for name in coll.index_information() if name in LEGACY_INDEXES]
    if {"outbox", "outbox_lease"} & set(legacy):  # adopt while their indexes still exist
        adopt_legacy_unpublished(coll)
    for name in legacy:
        coll.drop_index(name)
    for index in coll.list_indexes():
        if "expireAfterSeconds" in index and list(index["key"]) == ["created_at"]:
            coll.drop_index(index["name"])
