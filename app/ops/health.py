"""Liveness and readiness: ``/healthz`` says the process runs, ``/readyz`` that it can serve."""

from __future__ import annotations

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
    checks = {"mongodb": "ok", "redis": "ok"}
    try:
        mongo.ping()
    except PyMongoError:
        checks["mongodb"] = "down"
    try:
        current_app.extensions["redis"].ping()
    except redis.RedisError:
        checks["redis"] = "down"
    down = [name for name, state in checks.items() if state != "ok"]
    body = {"status": "ok" if not down else "unavailable", "checks": checks}
    if down:
        body["error"] = {"code": "unavailable", "message": "down: " + ", ".join(down)}
    return Response(orjson.dumps(body), status=503 if down else 200, mimetype="application/json")
