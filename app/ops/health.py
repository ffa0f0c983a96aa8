"""Liveness and readiness: ``/healthz`` says the process runs, ``/readyz`` that it can serve.

Ready means MongoDB and Redis answer, no MongoDB call of this worker has waited longer
than half of ``MONGO_OP_TIMEOUT_MS`` (``mongodb_oldest_call_seconds``), and MongoDB has
every index the queries rely on (``app/store/indexes.py``): without them the service
would slow as its data grows. It also names ``REDIS_MODE`` and, with Sentinel, the
primary this worker's commands go to (on a cluster, the masters of its slot map)."""

from __future__ import annotations

from typing import Any

import orjson
import pymongo
import redis
from flask import Blueprint, Response, current_app
from pymongo.errors import PyMongoError
from redis.exceptions import RedisClusterException

from app.extensions import mongo
from app.ops import metrics

bp = Blueprint("health", __name__)
PING_SECONDS = 1.0  # /readyz answers a load balancer's probe in about this, whatever MongoDB does


@bp.get("/healthz")
def healthz() -> Response:
    return Response(b'{"status":"ok"}', mimetype="application/json")


@bp.get("/readyz")
def readyz() -> Response:
    config = current_app.extensions["config"]
    checks = {"mongodb": "ok", "redis": "ok", "indexes": "unknown"}
    oldest = metrics.oldest_mongo_call()
    body: dict[str, Any] = {"checks": checks, "mongodb_oldest_call_seconds": round(oldest, 3)}
    if oldest > config.MONGO_OP_TIMEOUT_MS / 2000:
        checks["mongodb"] = "stalled"  # a call waits: a ping may answer while a collection is locked
    else:
        try:
            mongo.ping(timeout=PING_SECONDS)
        except PyMongoError:
            checks["mongodb"] = "down"
    client = current_app.extensions["redis"]
    try:
        client.ping()
    except (redis.RedisError, RedisClusterException):
        checks["redis"] = "down"
    body.update(current_app.extensions["redis_connector"].describe(client))
    down = [name for name, state in checks.items() if state == "down"]
    problems = ["down: " + ", ".join(down)] if down else []
    if checks["mongodb"] == "stalled":
        problems.append(f"MongoDB stalls: a call has waited {oldest:.1f} s")
    if checks["mongodb"] == "ok":
        with pymongo.timeout(PING_SECONDS):
            missing = current_app.extensions["indexes"].current()
        if missing is None:
            problems.append("MongoDB indexes not checked yet")
        elif missing:
            checks["indexes"] = "missing"
            body["missing_indexes"] = missing
            problems.append("MongoDB indexes missing: " + ", ".join(missing))
        else:
            checks["indexes"] = "ok"
    body["status"] = "unavailable" if problems else "ok"
    if problems:
        body["error"] = {"code": "unavailable", "message": "; ".join(problems)}
    return Response(orjson.dumps(body), status=503 if problems else 200, mimetype="application/json")
