"""Retention: the sweeper, prune, the upgrade from a TTL index, and the reset an expired cursor gets."""

from __future__ import annotations

from typing import Any

import pytest

from app.config import Config, ConfigError
from app.store.models import ensure_indexes, notifications_collection
from app.store.receipts import deliveries_collection
from app.store.retention import DAY, prune, retention_seconds

from .support import SSEClient, backdated


def test_retention_follows_config() -> None:
    assert retention_seconds(Config()) == 30 * DAY
    assert retention_seconds(Config(RETENTION_DAYS=0)) == 0
    with pytest.raises(ConfigError, match="RETENTION_DAYS"):
        Config(RETENTION_DAYS=-1).validate()


def test_an_older_versions_ttl_index_is_dropped(app: Any) -> None:
    with app.app_context():
        coll = notifications_collection()
        coll.create_index([("created_at", 1)], name="retention_ttl", expireAfterSeconds=30 * DAY)
        ensure_indexes()
        assert "retention_ttl" not in coll.index_information()


def test_the_sweeper_deletes_what_expired_once_per_pass_in_the_deployment(make_app: Any) -> None:
    app = make_app(RETENTION_DAYS=30)
    other_worker = make_app(RETENTION_DAYS=30).extensions["notifications"].retention
    sweeper = app.extensions["notifications"].retention
    with app.app_context():
        coll = notifications_collection()
        sweeper.redis.delete(sweeper.lock_key)
        docs = [backdated("sw", d, "old" if d > 30 else "kept") for d in (40, 31, 29)]
        coll.insert_many(docs)
        deliveries_collection().insert_many([{"_id": d["_id"], "user_id": "sw"} for d in docs])
        assert sweeper.sweep_once() == 2
        assert [d["message"] for d in coll.find({"user_id": "sw"})] == ["kept"]
        assert [d["_id"] for d in deliveries_collection().find()] == [docs[2]["_id"]], "their traces too"
        assert other_worker.sweep_once() is None  # the lock: one sweep a minute in the deployment
    assert make_app(RETENTION_DAYS=0).extensions["notifications"].retention.seconds == 0  # kept forever


def test_prune_deletes_only_older(app: Any) -> None:
    with app.app_context():
        coll = notifications_collection()
        coll.insert_many([backdated("p", 40, "old"), backdated("p", 31, "old"), backdated("p", 2, "new")])
        assert prune(coll, 30) == 2
        assert [d["message"] for d in coll.find({"user_id": "p"})] == ["new"]


def test_expired_cursor_gets_reset(app: Any, live: Any) -> None:
    server = live()
    ids = [server.notify("ret", f"n{i}") for i in range(3)]
    service = app.extensions["notifications"]
    with app.app_context():
        coll = notifications_collection()
        # What the sweeper does after RETENTION_DAYS (the Redis replay buffer, kept
        # only minutes, is long gone by then).
        coll.delete_many({"user_id": "ret", "seq": {"$lte": ids[1]["seq"]}})
        service.redis.delete(service.key("replay", "ret"))
    client = SSEClient(server.url, server.token("ret"), last_event_id=str(ids[0]["seq"]))
    try:
        client.wait_for(lambda: any(e["type"] == "reset" for e in client.events))
        reset = next(e for e in client.events if e["type"] == "reset")
        assert "expired cursor" in reset["data"]["reason"]
    finally:
        client.close()
