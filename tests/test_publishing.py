"""The write path: proposed cursors replaced when they must be, and what replay and the
recent list leave out while a batch is unpublished, on real servers."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import gevent
import orjson
import redis

from app.delivery.replay import events_after
from app.store.models import MARKERS, notifications_collection, outbox_marker

from .support import docs_for, marked, store_unpublished, wait_until


def publisher_service(app: Any) -> Any:
    return app.extensions["notifications"]


def test_a_cursor_overtaken_by_another_worker_is_replaced_and_written_back(app):
    """Worker A proposes first but publishes last: its cursor must not go out below B's."""
    publisher = app.extensions["notifications"].publisher
    with app.app_context():
        coll = notifications_collection()
        slow = docs_for("sam", 1)
        publisher.propose_cursors(slow)  # A proposed ...
        proposed = slow[0]["seq"]
        fast = publisher.store(docs_for("sam", 1)).notifications[0]  # ... B stored and published
        assert fast["seq"] > proposed
        marker = store_unpublished(slow)
        assert publisher.publish(slow, [marker])  # A publishes at last
        assert slow[0]["seq"] > fast["seq"]  # a fresh cursor, above what B published
        assert publisher.stats["resequenced"] == 1
        wait_until(lambda: not marked(coll, "sam"))  # the replaced cursor is written first
        assert coll.find_one({"_id": slow[0]["_id"]})["seq"] == slow[0]["seq"]
        replayed = events_after(publisher_service(app), "sam", 0, 100, strict=False)
        assert [e.seq for e in replayed] == [fast["seq"], slow[0]["seq"]]


def test_a_cursor_from_a_clock_far_ahead_is_replaced(app):
    publisher = app.extensions["notifications"].publisher
    with app.app_context():
        now_us = int(datetime.now(timezone.utc).timestamp() * 1e6)
        publisher._last_proposed = now_us + 3_600_000_000  # this worker's clock is an hour fast
        stored = publisher.store(docs_for("ski", 1)).notifications[0]
        assert now_us <= stored["seq"] < now_us + 60_000_000
        coll = notifications_collection()
        wait_until(lambda: coll.find_one({"user_id": "ski"})["seq"] == stored["seq"])


def _published_then_marked(service: Any, user: str) -> tuple[dict[str, Any], list[dict[str, Any]], Any]:
    """A published notification of ``user``; then a batch stored with its cursor and its
    outbox marker, not published: (the first, the batch, its marker)."""
    first = service.publisher.store(docs_for(user, 1)).notifications[0]
    pending = docs_for(user, 1)
    service.publisher.propose_cursors(pending)
    return first, pending, store_unpublished(pending)


def test_replay_from_mongodb_leaves_out_batches_not_yet_published(app):
    service = publisher_service(app)
    with app.app_context():
        coll = notifications_collection()
        first, _, marker = _published_then_marked(service, "tia")
        later = service.publisher.store(docs_for("tia", 1)).notifications[0]
        wait_until(lambda: [m["_id"] for m in marked(coll, "tia")] == [marker])  # later's is gone
        service.redis.delete(service.key("replay", "tia"))  # force the MongoDB path
        replayed = events_after(service, "tia", 0, 100, strict=False)
        assert [e.seq for e in replayed] == [first["seq"], later["seq"]]


def test_replay_from_mongodb_keeps_a_batch_published_while_still_marked(app):
    """The relay published a batch whose marker is not removed yet, then a later one went
    out: the first is left out of the MongoDB part, and is found in the Redis list."""
    service = publisher_service(app)
    with app.app_context():
        coll = notifications_collection()
        first, relayed, marker = _published_then_marked(service, "uma")
        assert service.publisher.publish(relayed, [])  # published; its marker stays for now
        later = service.publisher.store(docs_for("uma", 1)).notifications[0]
        wait_until(lambda: [m["_id"] for m in marked(coll, "uma")] == [marker])
        service.redis.ltrim(service.key("replay", "uma"), 1, -1)  # the list no longer reaches cursor 0
        replayed = events_after(service, "uma", 0, 100, strict=False)
        assert [e.seq for e in replayed] == [first["seq"], relayed[0]["seq"], later["seq"]]


def test_outbox_markers_are_never_shown_as_notifications(app, client, auth):
    service = publisher_service(app)
    with app.app_context():
        store_unpublished(docs_for("zed", 1))
        assert marked(notifications_collection(), "zed")
        recent = orjson.loads(service._recent_from_mongo())["notifications"]
        assert [n["user_id"] for n in recent] == ["zed"]
    for reserved in ("~outbox", outbox_marker([], 0)["user_id"]):
        resp = client.post("/api/notifications", json={"user_id": reserved, "message": "x"}, headers=auth)
        assert resp.status_code == 422 and resp.get_json()["error"]["field"] == "user_id"


def test_the_publish_script_is_loaded_again_when_redis_has_forgotten_it(app):
    publisher = publisher_service(app).publisher
    with app.app_context():
        assert publisher.store(docs_for("ada", 1)).published
        publisher.redis.script_flush()  # as after a Redis restart
        stored = publisher.store(docs_for("ada", 1))
        assert stored.published and isinstance(stored.notifications[0]["seq"], int)


def test_a_publish_whose_connection_dies_after_checkout_is_sent_again_at_once(app, monkeypatch):
    """The connection passed the pool's checks, then Redis dropped it: one immediate retry."""
    publisher = publisher_service(app).publisher
    pool = publisher.redis.connection_pool
    checkout = pool.get_connection
    killed: list[int] = []

    def dying_connection(*args: Any, **kwargs: Any) -> Any:
        conn = checkout(*args, **kwargs)
        if not killed:
            conn.send_command("CLIENT", "ID")
            killed.append(conn.read_response())
            with redis.Redis.from_url(app.extensions["config"].REDIS_URL) as other:
                assert other.client_kill_filter(_id=killed[0]) == 1
        return conn

    monkeypatch.setattr(pool, "get_connection", dying_connection)
    with app.app_context():
        stored = publisher.store(docs_for("bea", 1))
    assert killed and stored.published and isinstance(stored.notifications[0]["seq"], int)


def in_one_batch(app: Any, monkeypatch: Any, requests: list[list[dict[str, Any]]]) -> list[Any]:
    """``publisher.store`` of each request, all in one batch: the results, or the exceptions."""
    from gevent.event import Event

    from app.store.inserting import StoreRefused

    publisher = publisher_service(app).publisher
    release, wait_for_room = Event(), publisher.outbox.wait_for_room
    monkeypatch.setattr(publisher.outbox, "wait_for_room", lambda: (release.wait(), wait_for_room()))

    def store(docs: list[dict[str, Any]]) -> Any:
        try:
            return publisher.store(docs)
        except StoreRefused as exc:
            return exc

    batches = publisher.stats["batches"]
    greenlets = [gevent.spawn(store, docs) for docs in requests]
    gevent.sleep(0.05)  # every request queued behind the first: one batch
    release.set()
    results = [g.get(timeout=10) for g in greenlets]
    monkeypatch.setattr(publisher.outbox, "wait_for_room", wait_for_room)
    assert publisher.stats["batches"] == batches + 1
    return results


def keyed(user: str, key: str) -> list[dict[str, Any]]:
    from app.store.idempotency import RequestKey

    docs = docs_for(user, 1)
    RequestKey.of("owner", key, b"{}").mark(docs)
    return docs


def assert_stored_once(app: Any, users: list[str], results: list[Any]) -> None:
    coll = notifications_collection()
    for user, result in zip(users, results, strict=True):
        assert result.published and all(isinstance(n["seq"], int) for n in result.notifications)
        stored = sorted(str(d["_id"]) for d in coll.find({"user_id": user}))
        assert stored == sorted(n["id"] for n in result.notifications)
    wait_until(lambda: coll.count_documents(MARKERS) == 0)  # nothing left half-written


def test_a_document_the_store_refuses_fails_only_its_own_request(app, monkeypatch, caplog):
    """One batch: good requests and one with a value BSON cannot hold (past validation, as
    a bug there would let it): only that one fails."""
    from app.store.inserting import KeyTaken, StoreRefused

    bad = docs_for("bad", 1)
    bad[0]["data"] = {"n": 2**64 - 1}
    users = [f"good{i}" for i in range(6)]
    with app.app_context():
        results = in_one_batch(
            app,
            monkeypatch,
            [docs_for(u, 2) for u in users[:3]] + [bad] + [docs_for(u, 2) for u in users[3:]],
        )
        assert "storing them one by one" in caplog.text  # they were in one insert first
        assert isinstance(results[3], StoreRefused) and not isinstance(results[3], KeyTaken)
        assert_stored_once(app, users, results[:3] + results[4:])
        assert notifications_collection().count_documents({"user_id": "bad"}) == 0


def test_a_taken_idempotency_key_fails_only_its_own_request(app, monkeypatch, caplog):
    """One batch: good requests, a retry whose key is stored already, and two first
    attempts with one new key. The batch is stored again once per request at fault, not
    one by one; the retry and the repeat are told their key is taken."""
    from app.store.inserting import KeyTaken

    publisher = publisher_service(app).publisher
    with app.app_context():
        assert publisher.store(keyed("kim", "k-taken")).published
        users = [f"good{i}" for i in range(4)]
        requests = [docs_for(users[0], 2), keyed("kim", "k-taken"), docs_for(users[1], 2)]
        requests += [
            keyed("lea", "k-new"),
            docs_for(users[2], 2),
            keyed("lea", "k-new"),
            docs_for(users[3], 1),
        ]
        results = in_one_batch(app, monkeypatch, requests)
        assert "one by one" not in caplog.text
        assert isinstance(results[1], KeyTaken) and isinstance(results[5], KeyTaken)
        assert_stored_once(app, [*users, "lea"], [results[0], results[2], results[4], results[6], results[3]])
        assert notifications_collection().count_documents({"user_id": "kim"}) == 1


def test_while_redis_hangs_stored_batches_past_the_bound_go_to_the_relay(make_app, own_redis, monkeypatch):
    """Stored notifications waiting for a hung Redis are bounded: past the bound a batch is
    not queued for the publisher (its request answers at once, unpublished) and the relay
    publishes it once Redis answers again."""
    import time

    from app.extensions import RedisBudget
    from app.store import publishing

    from .support import frozen

    monkeypatch.setattr(publishing, "MAX_UNPUBLISHED_DOCS", 2)
    app = make_app(REDIS_URL=own_redis.url, PUBLISH_LEASE_SECONDS=1.0, RELAY_INTERVAL_SECONDS=0.2)
    publisher = publisher_service(app).publisher
    with app.app_context():
        assert publisher.store(docs_for("hal", 1)).published
        with frozen(own_redis):
            queued = [publisher.store(docs_for("hal", 1), RedisBudget(0.2)) for _ in range(2)]
            started = time.monotonic()
            overflow = publisher.store(docs_for("hal", 1), RedisBudget(30))
            assert time.monotonic() - started < 1  # not queued: no wait for the publish
        assert not any(s.published for s in [*queued, overflow])
        coll = notifications_collection()
        wait_until(lambda: coll.count_documents(MARKERS) == 0, timeout=20)
        assert publisher.stats["published"] >= 4 and publisher.stats["relayed"] >= 1
        assert all(isinstance(d["seq"], int) for d in coll.find({"user_id": "hal"}))
