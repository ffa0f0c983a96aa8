"""Retention: a TTL index from RETENTION_DAYS, prune, and the reset an expired cursor gets."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from app.config import Config
from app.models import ensure_indexes, notifications_collection
from app.retention import DAY, ensure_ttl_index, prune, retention_seconds, ttl_seconds
from app.serialization import new_document


def test_ttl_index_follows_config(app: Any) -> None:
    assert retention_seconds(Config()) == 30 * DAY
    assert retention_seconds(Config(RETENTION_DAYS=0)) == 0
    with app.app_context():
        coll = notifications_collection()
        assert ttl_seconds(coll) is None  # ensure_indexes() without a retention leaves it alone
        ensure_indexes(retention_seconds=30 * DAY)
        assert ttl_seconds(coll) == 30 * DAY
        assert ensure_ttl_index(coll, 30 * DAY) == "unchanged"
        assert ensure_ttl_index(coll, 7 * DAY) in ("modified", "rebuilt")
        assert ttl_seconds(coll) == 7 * DAY
        ensure_indexes()  # the plain call keeps the TTL
        assert ttl_seconds(coll) == 7 * DAY
        assert ensure_ttl_index(coll, 0) == "dropped"
        assert ttl_seconds(coll) is None


def _backdated(user: str, days_ago: float, message: str) -> dict[str, Any]:
    when = datetime.now(timezone.utc) - timedelta(days=days_ago)
    return new_document(user, message, "", "", {}, when)


def test_prune_deletes_only_older(app: Any) -> None:
    with app.app_context():
        coll = notifications_collection()
        coll.insert_many([_backdated("p", 40, "old"), _backdated("p", 31, "old"), _backdated("p", 2, "new")])
        assert prune(coll, 30) == 2
        assert [d["message"] for d in coll.find({"user_id": "p"})] == ["new"]


def test_expired_cursor_gets_reset(app: Any, client: Any, auth: dict[str, str]) -> None:
    ids = []
    for i in range(3):
        resp = client.post("/api/notifications", json={"user_id": "ret", "message": f"n{i}"}, headers=auth)
        ids.append(resp.get_json())
    service = app.extensions["notifications"]
    with app.app_context():
        coll = notifications_collection()
        # What the TTL monitor does after RETENTION_DAYS (the Redis replay buffer, kept
        # only minutes, is long gone by then).
        coll.delete_many({"user_id": "ret", "seq": {"$lte": ids[1]["seq"]}})
        service.redis.delete(service.key("replay", "ret"))
    token = client.post("/api/tokens", json={"user_id": "ret"}, headers=auth).get_json()["token"]
    headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": str(ids[0]["seq"])}
    resp = client.get("/stream", headers=headers)
    assert resp.status_code == 200
    body = b""
    chunks = iter(resp.response)
    while b"event: reset" not in body and len(body) < 10_000:
        body += next(chunks)
    resp.close()
    assert b"event: reset" in body and b"expired cursor" in body
