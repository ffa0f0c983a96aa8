"""MongoDB documents: the source of truth for notifications (idempotency keys included).

The hot paths (batched inserts, history pages, replay) go through the raw pymongo
collection of these documents to skip per-document object construction; the schema,
indexes and the rarer writes stay declared here.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from bson import ObjectId
from mongoengine import BooleanField, DateTimeField, DictField, Document, IntField, StringField
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

KEY_INDEX = "idem"
HISTORY_INDEX = "user_read_seq"  # a user's notifications in cursor order, per read state
CREATED_INDEX = "created"  # retention walks it (app/store/retention.py)
DUE_INDEX = "due"  # scheduled notifications not sent yet, by when due (app/store/scheduling.py)


class Notification(Document):
    """One notification for one user.

    ``seq`` is the user's stream cursor, proposed by the worker and stored with the
    document; the publish keeps it or replaces it (then writes the new one back), so every
    instance delivers a user's cursors in increasing order.

    One secondary index, ``(user_id, read, seq)``: unread counts and mark-read use its
    prefix; history pages and replay walk it in ``seq`` order through both read states
    (``EITHER_READ``). On the dev server every index costs about as much per insert as the
    document itself (``bench/README.md``, "The store step").

    A notification created with an ``Idempotency-Key`` carries its key as ``idem``
    (``app/store/idempotency.py``), unique: a second insert under the same key fails in the
    same write that stores the notification, so the key can never be recorded without its
    notification or the other way round. Sparse, not partial: the dev server plans no query
    on a partial index, and only documents that have an ``idem`` are in either.

    ``created`` (``created_at``): the retention pass walks it in time windows
    (``app/store/retention.py``); the dev server serves no range on ``_id``. A scheduled
    notification's ``created_at`` is its ``send_at``, so retention counts from then.

    ``due`` (``due_at``, sparse): only scheduled notifications not sent yet have the field,
    so the scheduler's look for what is due reads a few index entries however many
    notifications are stored (``app/store/scheduling.py``).

    ``hidden``: set when its user's preferences keep its category out of the inbox
    (``app/store/publishing.py``); such a notification has ``read: None``, as one waiting
    for its ``send_at``, so every inbox query's read range leaves it out, and a cursor.
    """

    user_id = StringField(required=True, max_length=128)
    title = StringField(default="", max_length=200)
    message = StringField(required=True, max_length=4000)
    category = StringField(default="", max_length=64)
    data = DictField()
    created_at = DateTimeField(required=True)
    read = BooleanField(default=False)
    seq = IntField()
    idem = StringField()  # "<api key fingerprint>:<Idempotency-Key>:<index in the request>"
    idem_hash = StringField()  # the request body's hash, on the request's first notification
    due_at = DateTimeField()  # a scheduled notification's due time (its claim's lease), until sent
    hidden = StringField()  # "preferences": its user keeps its category out of the inbox (read None)

    meta = {
        "collection": "notifications",
        "auto_create_index": False,
        "strict": False,  # an older version's outbox fields may still be on a document
        "indexes": [
            {"fields": ["user_id", "read", "seq"], "name": HISTORY_INDEX},
            {"fields": ["idem"], "name": KEY_INDEX, "unique": True, "sparse": True},
            {"fields": ["created_at"], "name": CREATED_INDEX},
            {"fields": ["due_at"], "name": DUE_INDEX, "sparse": True},
        ],
    }


T = TypeVar("T")


def by_history_index(read: Callable[[str | None], T]) -> T:
    """``read(HISTORY_INDEX)``: a query named to that index (SecantusDB, with fields beside
    the index's, would plan a scan of every user's notifications). Where the index is not
    there yet (a database a worker has not set up, or one that came back empty), MongoDB
    refuses the hint: then ``read(None)``, slower but answered."""
    try:
        return read(HISTORY_INDEX)
    except OperationFailure as exc:
        if exc.code != 2 or "hint" not in str(exc):
            raise
        return read(None)


# A query on a user's notifications in ``seq`` order names both read states, so MongoDB
# reads the ``user_read_seq`` index as two ranges merged in cursor order ("explode for
# sort") instead of sorting every notification of the user.
EITHER_READ = {"$in": [False, True]}


# A stored batch not yet recorded as published is marked by one more document in the
# same collection, inserted first in the batch's ``insert_many``, so it exists whenever any
# document of the batch does and costs no round trip of its own; it is deleted once the
# batch is published (``app/store/outbox.py``). ``ids`` lists the batch, and its ``seq`` is
# its lease deadline in microseconds. Only batches in flight have one: a handful at a
# time, more while Redis is down.
#
# A marker's user id starts with "~", above every id a request can name (the ASCII that
# ``app/api/validation.py`` allows sorts below it), so ``MARKERS`` finds them all through
# the ``user_read_seq`` index as one range, and ``is_marker`` tells them apart. Each
# marker takes one of ``OUTBOX_PARTITIONS`` user ids at random: on a cluster sharded by
# ``user_id`` (deploy/README.md) the markers' inserts and deletes spread over as many
# chunks instead of one hot key. Older versions' markers (``~outbox``) are in the range.
OUTBOX_PREFIX = "~outbox:"
OUTBOX_PARTITIONS = 16
MARKERS: dict[str, Any] = {"user_id": {"$gte": "~"}}


def is_marker(doc: dict[str, Any]) -> bool:
    return doc["user_id"] >= "~"


LEGACY_OUTBOX = "outbox"  # the collection the previous version kept its markers in
LEGACY_IDEMPOTENCY = "idempotency"  # where older versions kept Idempotency-Key records apart


# Reads that answer with notifications leave out an older version's outbox fields:
# ``public_json`` picks the fields, this keeps the wire small.
# ``idem`` and ``idem_hash`` are the request's key, not part of the notification.
PUBLIC_PROJECTION = {"outbox": 0, "published": 0, "lease_until": 0, "claim": 0, "idem": 0, "idem_hash": 0}


# SecantusDB (0.7.0b3) checks every candidate document against the whole filter, and an
# ``$in`` compares with each listed value in turn: a call naming n ids costs n x n
# comparisons, for a delete or an update under the collection's write lock, which every
# insert waits for (1.9 s at 1,000 ids, 39 s at 5,000; bench/README.md, "Calls by a list of
# ids"). So every call by a list of ids names at most this many (under 0.1 s each).
MAX_IDS_PER_CALL = 100
MARKER_CLOCK_MARGIN = timedelta(minutes=5)  # skew between the instances that made docs and markers


def id_chunks(ids: Sequence[Any]) -> Iterator[list[Any]]:
    """``ids`` in lists of at most ``MAX_IDS_PER_CALL``, in order."""
    for start in range(0, len(ids), MAX_IDS_PER_CALL):
        yield list(ids[start : start + MAX_IDS_PER_CALL])


def notifications_collection() -> Collection:
    return Notification._get_collection()


def ensure_key_index() -> None:
    """The unique ``idem`` index, which ``Idempotency-Key`` relies on: the worker's index
    set-up (``app/store/indexes.py``) may not have run yet when the first keyed POST comes."""
    create_missing(Notification)


def outbox_marker(ids: list[Any], lease_until_us: int) -> dict[str, Any]:
    """The marker of the batch of notifications ``ids`` (see ``MARKERS``)."""
    user = f"{OUTBOX_PREFIX}{random.randrange(OUTBOX_PARTITIONS):02d}"
    return {"_id": ObjectId(), "user_id": user, "read": False, "seq": lease_until_us, "ids": ids}


def lease_from_now(config: Any) -> int:
    """A publish lease's deadline, in µs: a marker older than this is due for the relay."""
    return time.time_ns() // 1000 + int(config.PUBLISH_LEASE_SECONDS * 1_000_000)


def still_marked(docs: list[dict[str, Any]]) -> set[Any]:
    """The ids of ``docs`` whose batch is still marked in the outbox (not published yet,
    or its cursor being replaced).

    A batch's marker is made after its documents, so only markers made since the oldest
    of ``docs`` (less a margin for clocks) can name them; those are few (a marker lives
    until its publish is cleaned up) and are matched here, not by an ``$in`` of every id,
    which SecantusDB compares id by id with each marker's list (``MAX_IDS_PER_CALL``)."""
    if not docs:
        return set()
    oldest = ObjectId.from_datetime(min(d["_id"].generation_time for d in docs) - MARKER_CLOCK_MARGIN)
    wanted = {d["_id"] for d in docs}
    markers = notifications_collection().find(MARKERS, {"ids": 1})  # the range alone: an index scan
    return {oid for m in markers if m["_id"] >= oldest for oid in m["ids"] if oid in wanted}


def outbox_due(before_us: int) -> dict[str, Any]:
    """The filter for markers whose lease ran out before ``before_us`` (with ids, for a
    claim); to find them, scan ``MARKERS`` and test ``seq`` (SecantusDB plans a range
    with more fields as a collection scan)."""
    return {**MARKERS, "seq": {"$lt": before_us}}


def adopt_legacy_unpublished(coll: Collection) -> int:
    """Hand the relay what older versions left unpublished; returns how many notifications.

    Three older layouts: ``published: false`` with a lease per document (each becomes a
    batch of its own), a batch marker in the first document's ``outbox`` field, and marker
    documents in an ``outbox`` collection. All become markers due now; the old fields and
    the old collection are removed. Safe to run again after an interruption."""
    now_us = time.time_ns() // 1000
    batches: list[tuple[list, Any]] = []
    for doc in coll.find({"$or": [{"published": False}, {"outbox": {"$exists": True}}]}, {"outbox": 1}):
        batches.append((doc["outbox"]["ids"] if doc.get("outbox") else [doc["_id"]], doc["_id"]))
    legacy_outbox = coll.database[LEGACY_OUTBOX]
    old_markers = list(legacy_outbox.find({}, {"ids": 1}))
    for old in old_markers:
        batches.append((old["ids"], None))
    for ids, holder in batches:
        if ids and coll.find_one({**MARKERS, "ids.0": ids[0]}, {"_id": 1}) is None:
            coll.insert_one(outbox_marker(ids, now_us))
        if holder is not None:
            coll.update_one({"_id": holder}, {"$unset": {"outbox": "", "published": ""}})
    for chunk in id_chunks([m["_id"] for m in old_markers]):
        legacy_outbox.delete_many({"_id": {"$in": chunk}})
    return sum(len(ids) for ids, _ in batches)


# What older versions created on notifications (dropped by ensure_indexes once it has run).
LEGACY_INDEXES = ("outbox", "outbox_lease", "user_newest", "user_unread", "user_seq")


def _key(fields: Any) -> tuple[tuple[str, int], ...]:
    return tuple((field, int(order)) for field, order in fields)


def index_name(spec: dict[str, Any]) -> str:
    return spec.get("name") or "_".join(f"{field}_{order}" for field, order in spec["fields"])


def missing_specs(document: type[Document]) -> list[dict[str, Any]]:
    """The declared indexes of ``document`` its collection lacks (compared by key)."""
    coll = document._get_collection()
    present = {_key(info["key"]) for info in coll.index_information().values()}
    return [spec for spec in document._meta["index_specs"] if _key(spec["fields"]) not in present]


def create_missing(document: type[Document]) -> None:
    """Create only what is missing: SecantusDB refuses a ``create_index`` whose options
    differ in any way from the existing index of that name (even mongoengine's
    ``background: false``), so an index made by other means is left as it is."""
    coll = document._get_collection()
    for spec in missing_specs(document):
        try:
            coll.create_index(spec["fields"], **{k: v for k, v in spec.items() if k != "fields"})
        except OperationFailure:
            # Another worker (or this one's set-up) made it meanwhile: what counts is that it exists.
            if _key(spec["fields"]) not in {_key(i["key"]) for i in coll.index_information().values()}:
                raise


def ensure_indexes() -> None:
    """Create every index and upgrade what older versions left; safe to call repeatedly.

    An older version's TTL index on ``created_at`` is dropped first: retention walks the
    ``created`` index (``app/store/retention.py``), which has the same key and no TTL. The
    older versions' separate ``idempotency`` collection is dropped: a key is kept with its
    notifications."""
    coll = notifications_collection()
    for index in coll.list_indexes():
        if "expireAfterSeconds" in index and list(index["key"]) == ["created_at"]:
            coll.drop_index(index["name"])
    create_missing(Notification)
    legacy = [name for name in coll.index_information() if name in LEGACY_INDEXES]
    collections = coll.database.list_collection_names()
    had_outbox = LEGACY_OUTBOX in collections
    if LEGACY_IDEMPOTENCY in collections:  # keys are kept on the notifications now
        coll.database.drop_collection(LEGACY_IDEMPOTENCY)
    if had_outbox or {"outbox", "outbox_lease"} & set(legacy):  # while their indexes still exist
        adopt_legacy_unpublished(coll)
    if had_outbox:
        coll.database.drop_collection(LEGACY_OUTBOX)
    for name in legacy:
        coll.drop_index(name)
