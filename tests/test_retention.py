"""Retention: the sweeper, prune, the upgrade from a TTL index, and the reset an expired cursor gets."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import MongoClient, monitoring

from app.config import Config, ConfigError
from app.store import retention
from app.store.models import CREATED_INDEX, MAX_IDS_PER_CALL, ensure_indexes, notifications_collection
from app.store.receipts import deliveries_collection
from app.store.retention import DAY, prune, retention_seconds

from .support import SSEClient, Stack, backdated


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
        indexes = coll.index_information()
        assert "retention_ttl" not in indexes
        assert (
            indexes[CREATED_INDEX]["key"] == [("created_at", 1)]
            and "expireAfterSeconds" not in indexes[CREATED_INDEX]
        )


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


class Commands(monitoring.CommandListener):
    """The commands a client sent: (name, the command)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.sent.append((event.command_name, dict(event.command)))

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


def test_a_pass_makes_only_short_calls_and_removes_everything_expired(
    app: Any, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every find is a window on the created index, every delete names at most
    MAX_IDS_PER_CALL ids; a dense stretch shrinks the window, a gap does not end the walk."""
    monkeypatch.setattr(retention, "WINDOW_DOCS", 40)
    with app.app_context():
        coll = notifications_collection()
        dense = [backdated("r", 31 + i / 100_000, "old") for i in range(230)]  # 0.9 s apart
        older = [backdated("r", d, "old") for d in (45, 400, 3000, 12000)]  # past gaps of years
        kept = [backdated("r", d, "kept") for d in (29.9, 1, 0)]
        coll.insert_many(dense + older + kept)
    commands = Commands()
    client: MongoClient = MongoClient(stack.mongo_uri, event_listeners=[commands])
    rests: list[float] = []
    try:
        observed = client.get_default_database()["notifications"]
        assert prune(observed, 30, between=rests.append) == len(dense) + len(older)
    finally:
        client.close()
    with app.app_context():
        assert sorted(d["message"] for d in notifications_collection().find({"user_id": "r"})) == ["kept"] * 3
        window = {"created_at": {"$gte": older[-1]["created_at"], "$lt": older[0]["created_at"]}}
        plan = notifications_collection().find(window).explain()["queryPlanner"]["winningPlan"]
        assert plan["inputStage"]["indexName"] == CREATED_INDEX  # the windows are index ranges
    finds = [c["filter"] for name, c in commands.sent if name == "find"]
    deletes = [d["q"] for name, c in commands.sent if name == "delete" for d in c["deletes"]]
    assert finds and all(list(f) == ["created_at"] and set(f["created_at"]) == {"$gte", "$lt"} for f in finds)
    assert deletes and all(list(q) == ["_id"] and len(q["_id"]["$in"]) <= MAX_IDS_PER_CALL for q in deletes)
    assert len(rests) == len(finds)  # the pass rests after every window
    assert len(finds) < 120  # doubling across the empty years, shrinking in the dense stretch


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
