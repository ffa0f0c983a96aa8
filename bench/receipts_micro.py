"""What delivery receipts cost a worker: CPU per recorded write, flush and fold included.

    .venv/bin/python bench/receipts_micro.py [--notifications 1000] [--clients 10] [--rounds 5]

Starts its own redis-server and SecantusDB, then, per round, records what a broadcast
leaves behind (one published batch of ``--notifications``, each written to ``--clients``
connections), flushes it to Redis and folds it into MongoDB, as a worker's greenlets do.
Prints this process's CPU time (the worker's share; Redis and SecantusDB run apart) per
recorded write for the flush and for the fold, the median of the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import mongoengine
import redis
from bson import ObjectId

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.store.models import notifications_collection  # noqa: E402
from app.store.receipts import Receipts, deliveries_collection  # noqa: E402
from tools.devservers import mongo_server, redis_server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--notifications", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rds, mongo = redis_server(), mongo_server()
    rds.start()
    mongo.start()
    try:
        mongoengine.connect(host=f"{mongo.url.rstrip('/')}/receipts_micro", uuidRepresentation="standard")
        config = SimpleNamespace(
            KEY_PREFIX="rm:", instance="bench", RECEIPT_FOLD_DELAY_SECONDS=0, RECEIPT_FOLD_BATCH=500
        )
        receipts = Receipts(config, redis.Redis.from_url(rds.url, protocol=3))
        conns = [receipts.connection("ws") for _ in range(args.clients)]
        flush_us, fold_us = [], []
        for _ in range(args.rounds):
            docs = [{"_id": ObjectId(), "user_id": f"u{i}"} for i in range(args.notifications)]
            notifications_collection().insert_many(docs)
            receipts.published(docs, time.time())
            for doc in docs:
                nid = str(doc["_id"])
                for conn in conns:
                    receipts.sent(nid, conn)
            writes = args.notifications * args.clients
            started = time.process_time()
            receipts.flush()
            flush_us.append((time.process_time() - started) / writes * 1e6)
            started = time.process_time()
            while receipts.fold():
                pass
            fold_us.append((time.process_time() - started) / writes * 1e6)
        assert deliveries_collection().count_documents({}) == args.notifications * args.rounds
        print(
            f"per recorded write: flush {statistics.median(flush_us):.2f} us, "
            f"fold {statistics.median(fold_us):.2f} us (median of {args.rounds} rounds, "
            f"{args.notifications} notifications x {args.clients} connections)"
        )
    finally:
        mongoengine.disconnect()
        mongo.stop()
        rds.stop()


if __name__ == "__main__":
    main()
