"""What one notification costs the dev MongoDB-wire server: the insert and the cursor write-back.

    .venv/bin/python bench/dbprobe.py

Starts its own SecantusDB, creates the notifications indexes (app/models.py) and times
``insert_many`` and the write-back bulk (``$set seq, published``; ``$unset`` lease) at
batch sizes 1, 16 and 1,000, in ms per document.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bson import ObjectId
from pymongo import MongoClient, UpdateOne

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.devservers import mongo_server  # noqa: E402


def main() -> None:
    with mongo_server() as server:
        client: MongoClient = MongoClient(server.url, directConnection=True)
        coll = client.bench.notifications
        for keys in ([("user_id", 1), ("_id", -1)], [("user_id", 1), ("read", 1)],
                     [("user_id", 1), ("seq", 1)], [("published", 1), ("lease_until", 1)]):  # fmt: skip
            coll.create_index(keys)
        now = datetime.now(timezone.utc)
        for batch in (1, 16, 1000):
            insert = update = 0.0
            reps = max(1, 2000 // batch)
            for _ in range(reps):
                docs = [
                    {"_id": ObjectId(), "user_id": f"u{i}", "title": "", "message": "bench", "data": {"k": 1},
                     "created_at": now, "read": False, "published": False, "lease_until": now}
                    for i in range(batch)
                ]  # fmt: skip
                t0 = time.perf_counter()
                coll.insert_many(docs, ordered=False)
                t1 = time.perf_counter()
                change = {"$set": {"seq": 1, "published": True}, "$unset": {"lease_until": ""}}
                ops = [UpdateOne({"_id": d["_id"]}, change) for d in docs]
                coll.bulk_write(ops, ordered=False)
                insert, update = insert + t1 - t0, update + time.perf_counter() - t1
            n = reps * batch
            per = f"insert {insert / n * 1e3:.3f} ms/doc, write-back {update / n * 1e3:.3f} ms/doc"
            print(f"batch {batch:5d}: {per}")
        client.close()


if __name__ == "__main__":
    main()
