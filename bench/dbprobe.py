"""What one notification costs the dev MongoDB-wire server, before and after the outbox change.

    .venv/bin/python bench/dbprobe.py

Starts its own SecantusDB with the notifications indexes and times, at batch sizes 1, 16
and 1,000, in ms per document:
- before: ``insert_many`` (``published: false``, a lease per document, indexed), then the
  cursor write-back (``$set seq, published``; ``$unset`` lease), one update per document;
- now (``app/publishing.py``): ``insert_many`` with the cursor and one outbox marker on the
  batch's first document (sparse index), then one update removing the marker, for up to
  50 batches at a time.
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

from tools.devservers import mongo_server  # noqa: E402

COMMON = ([("user_id", 1), ("_id", -1)], [("user_id", 1), ("read", 1)], [("user_id", 1), ("seq", 1)])


def batch_docs(batch: int, rep: int, now: datetime) -> list[dict[str, Any]]:
    return [
        {"_id": ObjectId(), "user_id": f"u{i}", "title": "", "message": "bench", "category": "",
         "data": {"k": 1}, "created_at": now, "read": False, "seq": rep * 10_000 + i}
        for i in range(batch)
    ]  # fmt: skip


def before(coll: Any, batch: int, reps: int) -> tuple[float, float]:
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


def now_design(coll: Any, batch: int, reps: int) -> tuple[float, float]:
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


def main() -> None:
    with mongo_server() as server:
        client: MongoClient = MongoClient(server.url, directConnection=True)
        for name, run, extra in (
            ("before", before, ([("published", 1), ("lease_until", 1)], {})),
            ("now", now_design, ([("outbox.lease_until", 1)], {"sparse": True})),
        ):
            coll = client.bench[f"notifications_{name}"]
            for keys in COMMON:
                coll.create_index(list(keys))
            coll.create_index(extra[0], **extra[1])
            coll.create_index([("created_at", 1)], expireAfterSeconds=30 * 86400)
            for batch in (1, 16, 1000):
                reps = max(2, 2000 // batch)
                insert, update = run(coll, batch, reps)
                n = reps * batch
                per = [t / n * 1e3 for t in (insert, update, insert + update)]
                print(f"{name:6s} batch {batch:5d}: insert {per[0]:.3f} ms/doc, after the publish "
                      f"{per[1]:.3f} ms/doc, total {per[2]:.3f}")  # fmt: skip
        client.close()


if __name__ == "__main__":
    main()
