"""Liveness and readiness: ``/healthz`` says the process runs, ``/readyz`` that it can serve.

Ready means MongoDB and Redis answer and MongoDB has every index the queries rely on
(``app/store/indexes.py``): without them the service would slow as its data grows."""

from __future__ import annotations

from typing import Any

import orjson
import redis
from flask import Blueprint, Response, current_app
from pymongo.errors import PyMongoError

from app.extensions import mongo

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return Response(b'{"status":"ok"}', mimetype="application/json")


@bp.get("/readyz")
def readyz() -> Response:
    checks = {"mongodb": "ok", "redis": "ok", "indexes": "unknown"}
    body: dict[str, Any] = {"checks": checks}
    try:
        mongo.ping()
    except PyMongoError:
        checks["mongodb"] = "down"
    try:
        current_app.extensions["redis"].ping()
    except redis.RedisError:
        checks["redis"] = "down"
    down = [name for name, state in checks.items() if state == "down"]
    problems = ["down: " + ", ".join(down)] if down else []
    if checks["mongodb"] == "ok":
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
