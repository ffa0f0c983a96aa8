"""How long one find, update or delete by ``_id: {$in: [...]}`` takes on SecantusDB.

    .venv/bin/python bench/secantus_delete_probe.py mongodb://127.0.0.1:PORT/ [DB] [SIZES]

Against a server whose ``DB.notifications`` (default ``notify``) already holds the stored
notifications (``bench/growth.py`` builds them once in ``.devdata/growth/N``, database
``growth``; start SecantusDB on a copy of that directory), it inserts SIZE documents
of the reserved outbox user and times, for each comma-separated SIZE (default
1,10,50,100,200,500,1000,5000), the calls the service makes with such a list: a find, an
update_many and a delete_many with the outbox clean-up's filter
``{_id: {$in: ids}, user_id: "~outbox"}``. What it inserts it deletes.

SecantusDB 0.7.0b3 checks every candidate document against the whole filter with
``matches()``, and ``$in`` compares the document's ``_id`` with each listed value in turn
(``secantus/query.py`` ``_in_candidate_matches``), so one call costs ids x ids
comparisons; a delete or update does this holding the collection's write lock.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from bson import ObjectId
from pymongo import MongoClient

DEFAULT_SIZES = "1,10,50,100,200,500,1000,5000"


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    uri = sys.argv[1]
    db = sys.argv[2] if len(sys.argv) > 2 else "notify"
    sizes = [int(s) for s in (sys.argv[3] if len(sys.argv) > 3 else DEFAULT_SIZES).split(",")]
    coll = MongoClient(uri, directConnection=True, socketTimeoutMS=600_000)[db].notifications
    print(f"{coll.estimated_document_count():,} documents; indexes {sorted(coll.index_information())}")
    print(f"{'ids':>6} {'find ms':>10} {'update ms':>10} {'delete ms':>10} {'delete us/id':>13}")
    for size in sizes:
        docs = [{"_id": ObjectId(), "user_id": "~outbox", "read": False, "seq": 0} for _ in range(size)]
        coll.insert_many(docs)
        mine = {"_id": {"$in": [d["_id"] for d in docs]}, "user_id": "~outbox"}
        find = timed(lambda: list(coll.find(mine, {"_id": 1})))  # noqa: B023 - called at once
        update = timed(lambda: coll.update_many(mine, {"$set": {"seq": 1}}))  # noqa: B023
        delete = timed(lambda: coll.delete_many(mine))  # noqa: B023
        per_id = delete * 1000 / size
        print(f"{size:>6} {find:>10.1f} {update:>10.1f} {delete:>10.1f} {per_id:>13.0f}", flush=True)


if __name__ == "__main__":
    main()
