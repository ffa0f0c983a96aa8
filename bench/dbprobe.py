"""What one notification costs the dev MongoDB-wire server, in three store designs.

    .venv/bin/python bench/dbprobe.py

Starts its own SecantusDB and times, at batch sizes 1, 16 and 1,000, in ms per document,
the insert and what follows the publish:
- two writes (until 2026-11-27): ``insert_many`` with ``published: false`` and an indexed
  lease per document, then the cursor write-back, one update per document;
- marker in the batch (until 2026-12-01): the cursor stored with the document, the
  batch's first document carrying the outbox marker (sparse index), one update removing
  the markers of up to 50 batches; five secondary indexes (the TTL index included);
- outbox, two indexes (until 2026-12-02): the marker a document of its own in the
  ``outbox`` collection, inserted before the batch, one delete for up to 50 markers;
  ``(user_id, read)`` and ``(user_id, seq)`` on ``notifications``;
- outbox, one index (until 2026-12-02 01:00): the same outbox, one secondary index
  ``(user_id, read, seq)``;
- now (``app/store/publishing.py``, ``app/store/models.py``): that index, and the marker a document
  of the reserved user ``~outbox`` in ``notifications``, first in the batch's
  ``insert_many`` (no round trip of its own), one delete for up to 50 markers.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bson import ObjectId
from pymongo import MongoClient, UpdateOne

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.store.models import MARKERS, outbox_marker  # noqa: E402
from tools.devservers import mongo_server  # noqa: E402

UNREAD = ([("user_id", 1), ("read", 1)], {})
SEQ = ([("user_id", 1), ("seq", 1)], {})
TTL = ([("created_at", 1)], {"expireAfterSeconds": 30 * 86400})
READ_SEQ = ([("user_id", 1), ("read", 1), ("seq", 1)], {})
OLD = [([("user_id", 1), ("_id", -1)], {}), UNREAD, SEQ, TTL]  # until 2026-12-01
INDEXES = {
    "two writes": [*OLD, ([("published", 1), ("lease_until", 1)], {})],
    "marker in batch": [*OLD, ([("outbox.lease_until", 1)], {"sparse": True})],
    "outbox, two indexes": [UNREAD, SEQ],
    "outbox, one index": [READ_SEQ],
    "now": [READ_SEQ],
}


def batch_docs(batch: int, rep: int, now: datetime) -> list[dict[str, Any]]:
    return [
        {"_id": ObjectId(), "user_id": f"u{i}", "title": "", "message": "bench", "category": "",
         "data": {"k": 1}, "created_at": now, "read": False, "seq": rep * 10_000 + i}
        for i in range(batch)
    ]  # fmt: skip


def two_writes(db: Any, coll: Any, batch: int, reps: int) -> tuple[float, float]:
    now, insert, update = datetime.now(timezone.utc), 0.0, 0.0
    for rep in range(reps):
        docs = batch_docs(batch, rep, now)
        for doc in docs:
            doc.update(seq=None, published=False, lease_until=now)
        t0 = time.perf_counter()
        coll.insert_many(docs, ordered=False)
        t1 = time.perf_counter()
        change = {"$set": {"seq": 1, "published": True}, "$unset": {"lease_until": ""}}
        coll.bulk_write([UpdateOne({"_id": d["_id"]}, change) for d in docs], ordered=False)
        insert, update = insert + t1 - t0, update + time.perf_counter() - t1
    return insert, update


def marker_in_batch(db: Any, coll: Any, batch: int, reps: int) -> tuple[float, float]:
    now, insert, markers = datetime.now(timezone.utc), 0.0, []
    for rep in range(reps):
        docs = batch_docs(batch, rep, now)
        docs[0]["outbox"] = {"lease_until": now, "ids": [d["_id"] for d in docs]}
        t0 = time.perf_counter()
        coll.insert_many(docs, ordered=True)
        insert += time.perf_counter() - t0
        markers.append(docs[0]["_id"])
    t1 = time.perf_counter()
    for i in range(0, len(markers), 50):
        coll.update_many({"_id": {"$in": markers[i : i + 50]}}, {"$unset": {"outbox": ""}})
    return insert, time.perf_counter() - t1


def outbox_design(db: Any, coll: Any, batch: int, reps: int) -> tuple[float, float]:
    outbox = db[f"outbox_{coll.name}"]
    outbox.create_index([("lease_until", 1)])
    now, insert, markers = datetime.now(timezone.utc), 0.0, []
    for rep in range(reps):
        docs = batch_docs(batch, rep, now)
        t0 = time.perf_counter()
        outbox.insert_one({"_id": docs[0]["_id"], "lease_until": now, "ids": [d["_id"] for d in docs]})
        coll.insert_many(docs, ordered=True)
        insert += time.perf_counter() - t0
        markers.append(docs[0]["_id"])
    t1 = time.perf_counter()
    for i in range(0, len(markers), 50):
        outbox.delete_many({"_id": {"$in": markers[i : i + 50]}})
    return insert, time.perf_counter() - t1


def now_design(db: Any, coll: Any, batch: int, reps: int) -> tuple[float, float]:
    now, insert, markers = datetime.now(timezone.utc), 0.0, []
    for rep in range(reps):
        docs = batch_docs(batch, rep, now)
        marker = outbox_marker([d["_id"] for d in docs], rep)
        t0 = time.perf_counter()
        coll.insert_many([marker, *docs], ordered=True)
        insert += time.perf_counter() - t0
        markers.append(marker["_id"])
    t1 = time.perf_counter()
    for i in range(0, len(markers), 50):
        coll.delete_many({"_id": {"$in": markers[i : i + 50]}, **MARKERS})
    return insert, time.perf_counter() - t1


def main() -> None:
    designs = {
        "two writes": two_writes,
        "marker in batch": marker_in_batch,
        "outbox, two indexes": outbox_design,
        "outbox, one index": outbox_design,
        "now": now_design,
    }
    with mongo_server() as server:
        client: MongoClient = MongoClient(server.url, directConnection=True)
        db = client.bench
        for batch in (1, 16, 1000):
            for j, (name, run) in enumerate(designs.items()):  # interleaved: the machine drifts
                coll = db[f"notifications_{batch}_{j}"]
                for keys, options in INDEXES[name]:
                    coll.create_index(keys, **options)
                reps = max(2, 2000 // batch)
                insert, after = run(db, coll, batch, reps)
                n = reps * batch
                per = [t / n * 1e3 for t in (insert, after, insert + after)]
                print(f"{name:19s} batch {batch:5d}: insert {per[0]:.3f} ms/doc, after the publish "
                      f"{per[1]:.3f} ms/doc, total {per[2]:.3f}")  # fmt: skip
        client.close()


if __name__ == "__main__":
    main()
