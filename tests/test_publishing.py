"""The write path's outbox: proposed cursors, batch markers, clean-up and the relay, on real servers."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import gevent
import orjson
import pytest
from gevent.event import Event

from app import publishing
from app.models import LEGACY_OUTBOX, OUTBOX_USER, notifications_collection, outbox_marker
from app.replay import events_after
from app.serialization import new_document

from .support import store_unpublished


@pytest.fixture
def stalled(app: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Event]:
    """The app's publisher with its post-publish clean-up held until the returned event is set."""
    publisher = app.extensions["notifications"].publisher
    release = Event()
    record = publisher._record_cleanups

    def slow_record(markers: list[Any], fixes: list[tuple[Any, int]]) -> None:
        release.wait()
        record(markers, fixes)

    monkeypatch.setattr(publisher, "_record_cleanups", slow_record)
    return publisher, release


def docs_for(user: str, n: int) -> list[dict[str, Any]]:
    now = datetime.now(timezone.utc)
    return [new_document(user, f"m{i}", "", "", {}, now) for i in range(n)]


def marked(coll: Any, user: str) -> list[dict[str, Any]]:
    """The outbox markers of batches holding any of ``user``'s notifications."""
    ids = [d["_id"] for d in coll.find({"user_id": user}, {"_id": 1})]
    return list(coll.find({"user_id": OUTBOX_USER, "ids": {"$in": ids}}))


def now_us() -> int:
    return time.time_ns() // 1000


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    with gevent.Timeout(timeout):
        while not predicate():
            gevent.sleep(0.01)


def test_each_document_is_written_once_with_its_cursor_and_the_batch_marker_goes(app, stalled):
    publisher, release = stalled
    with app.app_context():
        stored = publisher.store(docs_for("pat", 3))
        assert stored.published
        coll = notifications_collection()
        rows = {str(r["_id"]): r["seq"] for r in coll.find({"user_id": "pat"})}
        assert rows == {n["id"]: n["seq"] for n in stored.notifications}  # published as stored
        seqs = [n["seq"] for n in stored.notifications]
        assert seqs == sorted(seqs) and len(set(seqs)) == 3
        (marker,) = marked(coll, "pat")  # one marker for the batch, its lease deadline as its seq
        assert [str(i) for i in marker["ids"]] == [n["id"] for n in stored.notifications]
        assert marker["seq"] > now_us() and marker["read"] is False
        assert all("outbox" not in d for d in coll.find({"user_id": "pat"}))  # the documents stay clean

        # the lease runs out while the clean-up is still behind: the relay must not publish again
        coll.update_one({"_id": marker["_id"]}, {"$set": {"seq": now_us() - 300_000_000}})
        published = publisher.stats["published"]
        assert publisher.relay_once() == 0
        assert publisher.stats["published"] == published

        release.set()
        wait_until(lambda: not marked(coll, "pat"))
        assert publisher.relay_once() == 0
        assert sorted(r["seq"] for r in coll.find({"user_id": "pat"})) == seqs


def test_batcher_holds_new_batches_while_the_clean_up_is_behind(app, stalled, monkeypatch):
    publisher, release = stalled
    monkeypatch.setattr(publishing, "WRITEBACK_BACKLOG_DOCS", 0)
    with app.app_context():
        assert publisher.store(docs_for("quinn", 3)).published  # one marker behind > 0
        coll = notifications_collection()
        later = gevent.spawn(publisher.store, docs_for("quinn", 1))
        assert publisher.waiting_for_writeback.wait(10)
        assert coll.count_documents({"user_id": "quinn"}) == 3  # the next batch was not inserted
        assert not later.ready()

        release.set()
        stored = later.get(timeout=10)
        assert stored.published
        wait_until(lambda: coll.count_documents({"user_id": "quinn"}) == 4 and not marked(coll, "quinn"))


def test_a_dead_clean_up_does_not_stop_the_store_for_more_than_a_lease(make_app, monkeypatch, caplog):
    app = make_app(PUBLISH_LEASE_SECONDS=1.0)
    publisher = app.extensions["notifications"].publisher
    monkeypatch.setattr(publishing, "WRITEBACK_BACKLOG_DOCS", 0)
    monkeypatch.setattr(publisher, "_record_cleanups", lambda markers, fixes: Event().wait())  # never returns
    with app.app_context():
        assert publisher.store(docs_for("rae", 1)).published
        with gevent.Timeout(10):
            assert publisher.store(docs_for("rae", 1)).published  # after one lease, not never
        assert notifications_collection().count_documents({"user_id": "rae"}) == 2
    assert "MongoDB is behind: new notifications waited" in caplog.text  # operators see the hold


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


def test_replay_from_mongodb_leaves_out_batches_not_yet_published(app):
    service = publisher_service(app)
    with app.app_context():
        coll = notifications_collection()
        first = service.publisher.store(docs_for("tia", 1)).notifications[0]
        pending = docs_for("tia", 1)
        service.publisher.propose_cursors(pending)
        marker = store_unpublished(pending)  # stored with its cursor, not published yet
        later = service.publisher.store(docs_for("tia", 1)).notifications[0]
        wait_until(lambda: [m["_id"] for m in marked(coll, "tia")] == [marker])  # later's is gone
        service.redis.delete(service.key("replay", "tia"))  # force the MongoDB path
        replayed = events_after(service, "tia", 0, 100, strict=False)
        assert [e.seq for e in replayed] == [first["seq"], later["seq"]]


def test_a_batch_stored_while_redis_was_down_is_relayed_with_cursors(make_app, own_redis):
    app = make_app(REDIS_URL=own_redis.url, RELAY_INTERVAL_SECONDS=3600)  # only this test relays
    publisher = app.extensions["notifications"].publisher
    with app.app_context():
        own_redis.kill()
        stored = publisher.store(docs_for("uma", 2))
        assert not stored.published and [n["seq"] for n in stored.notifications] == [None, None]
        publisher.relay_once()  # Redis still down: the batch stays marked for later
        assert len(marked(notifications_collection(), "uma")) == 1
        own_redis.restart()
        assert publisher.relay_once() == 1  # its lease was released: no waiting
        coll = notifications_collection()
        wait_until(lambda: not marked(coll, "uma"))
        seqs = [d["seq"] for d in coll.find({"user_id": "uma"}).sort("_id", 1)]
        assert all(isinstance(s, int) for s in seqs) and seqs == sorted(seqs) and len(set(seqs)) == 2
        assert publisher.relay_once() == 0


def publisher_service(app: Any) -> Any:
    return app.extensions["notifications"]


def upgrade_from(app: Any, legacy: list[dict[str, Any]], indexes: dict[str, list[Any]]) -> Any:
    """Store what an older version left, with its indexes, and run the upgrade; the publisher."""
    from app.models import ensure_indexes

    publisher = publisher_service(app).publisher
    publisher.start(relay=False)  # only the test relays
    coll = notifications_collection()
    coll.insert_many(legacy)
    for name, keys in indexes.items():
        coll.create_index(keys, name=name)
    ensure_indexes()
    assert set(coll.index_information()) == {"_id_", "user_read_seq"}  # the old indexes are gone
    return publisher


def test_what_an_older_version_left_unpublished_is_adopted_and_relayed(app):
    with app.app_context():
        coll = notifications_collection()
        legacy = docs_for("vic", 2)
        for doc in legacy:  # the old outbox: a flag and a lease per document, no cursor yet
            doc.update(published=False, lease_until=datetime.now(timezone.utc))
        publisher = upgrade_from(app, legacy, {"outbox": [("published", 1), ("lease_until", 1)]})
        assert len(marked(coll, "vic")) == 2
        assert publisher.relay_once() == 2
        wait_until(lambda: not marked(coll, "vic"))
        seqs = [d["seq"] for d in coll.find({"user_id": "vic"})]
        assert all(isinstance(s, int) for s in seqs) and len(set(seqs)) == 2


PREVIOUS_INDEXES = {"user_unread": [("user_id", 1), ("read", 1)], "user_seq": [("user_id", 1), ("seq", 1)]}


def old_batch(app: Any, user: str, n: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A batch with its cursors, and the marker an older version kept for it (lease, ids)."""
    batch = docs_for(user, n)
    publisher_service(app).publisher.propose_cursors(batch)
    lease = datetime.now(timezone.utc) + timedelta(seconds=10)
    return batch, {"lease_until": lease, "ids": [d["_id"] for d in batch]}


def relayed_once_adopted(publisher: Any, coll: Any, user: str, batch: list[dict[str, Any]]) -> None:
    (marker,) = marked(coll, user)
    assert marker["ids"] == [d["_id"] for d in batch]
    assert publisher.relay_once() == 1  # due at once: the old lease is not trusted
    wait_until(lambda: not marked(coll, user))
    assert publisher.stats["relayed"] == len(batch)


def test_markers_an_older_version_kept_in_the_documents_move_to_the_outbox(app):
    with app.app_context():
        coll = notifications_collection()
        batch, old_marker = old_batch(app, "wes", 3)
        batch[0]["outbox"] = old_marker  # the marker in a document
        old = {"outbox_lease": [("outbox.lease_until", 1)], "user_newest": [("user_id", 1), ("_id", -1)]}
        publisher = upgrade_from(app, batch, {**old, **PREVIOUS_INDEXES})
        assert "outbox" not in coll.find_one(batch[0]["_id"])
        relayed_once_adopted(publisher, coll, "wes", batch)


def test_a_marker_whose_batch_never_arrived_is_dropped_by_the_relay(app):
    publisher = publisher_service(app).publisher
    with app.app_context():
        lost = docs_for("xan", 2)  # the insert failed after the marker and could not be undone
        marker = outbox_marker([d["_id"] for d in lost], now_us() - 1_000_000)
        notifications_collection().insert_one(marker)
        published = publisher.stats["published"]
        assert publisher.relay_once() == 1
        assert notifications_collection().count_documents({"_id": marker["_id"]}) == 0
        assert publisher.stats["published"] == published


def test_markers_the_previous_version_kept_in_an_outbox_collection_move_in(app):
    with app.app_context():
        coll = notifications_collection()
        batch, old_marker = old_batch(app, "yul", 2)
        coll.database[LEGACY_OUTBOX].insert_one({"_id": batch[0]["_id"], **old_marker})
        publisher = upgrade_from(app, batch, PREVIOUS_INDEXES)
        assert LEGACY_OUTBOX not in coll.database.list_collection_names()
        relayed_once_adopted(publisher, coll, "yul", batch)


def test_outbox_markers_are_never_shown_as_notifications(app, client, auth):
    service = publisher_service(app)
    with app.app_context():
        store_unpublished(docs_for("zed", 1))
        assert marked(notifications_collection(), "zed")
        recent = orjson.loads(service._recent_from_mongo())["notifications"]
        assert [n["user_id"] for n in recent] == ["zed"]
    resp = client.post("/api/notifications", json={"user_id": OUTBOX_USER, "message": "x"}, headers=auth)
    assert resp.status_code == 422 and resp.get_json()["error"]["field"] == "user_id"
