"""The outbox: batch markers, the clean-up after a publish and the relay, on real servers."""

from __future__ import annotations

import re
import signal
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import gevent
import pytest
from gevent.event import Event
from pymongo.errors import ExecutionTimeout

from app.config import Config, ConfigError
from app.store import outbox
from app.store.models import (
    CREATED_INDEX,
    DUE_INDEX,
    LEGACY_OUTBOX,
    MARKERS,
    OUTBOX_PARTITIONS,
    notifications_collection,
    outbox_marker,
)

from .support import docs_for, marked, wait_until


@pytest.fixture
def stalled(app: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Event]:
    """The app's publisher with its post-publish clean-up held until the returned event is set."""
    publisher = app.extensions["notifications"].publisher
    release = Event()
    record = publisher.outbox._record_cleanups

    def slow_record(markers: list[Any], fixes: list[tuple[Any, int]]) -> None:
        release.wait()
        record(markers, fixes)

    monkeypatch.setattr(publisher.outbox, "_record_cleanups", slow_record)
    return publisher, release


def now_us() -> int:
    return time.time_ns() // 1000


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
        assert publisher.outbox.relay_once() == 0
        assert publisher.stats["published"] == published

        release.set()
        wait_until(lambda: not marked(coll, "pat"))
        assert publisher.outbox.relay_once() == 0
        assert sorted(r["seq"] for r in coll.find({"user_id": "pat"})) == seqs


def test_a_clean_up_that_outlasts_the_bound_goes_on_in_smaller_rounds(app, monkeypatch):
    """A bulk's replaced cursors may be too many for one round within MONGO_OP_TIMEOUT_MS on a
    busy database: retried whole, it would never end, the batcher would be held and the
    relays would publish the batch again and again."""
    publisher = app.extensions["notifications"].publisher
    record = publisher.outbox._record_cleanups
    rounds: list[tuple[int, int]] = []

    def bounded(markers: list[Any], fixes: list[tuple[Any, int]]) -> None:
        rounds.append((len(markers), len(fixes)))
        if len(markers) + len(fixes) > 100:  # what this database can do within the bound
            raise ExecutionTimeout("operation exceeded time limit", 50)
        if markers:  # the marker goes only with the last cursors, after all the others
            written = {d["_id"]: d["seq"] for d in coll.find({"user_id": "bulky"})}
            assert all(written[oid] >= 1000 for oid in written.keys() - {oid for oid, _seq in fixes})
        record(markers, fixes)

    monkeypatch.setattr(publisher.outbox, "_record_cleanups", bounded)
    monkeypatch.setattr(outbox, "CLEANUP_RETRY_SECONDS", 0.01)
    with app.app_context():
        coll = notifications_collection()
        docs = docs_for("bulky", 300)
        for i, doc in enumerate(docs):
            doc["seq"] = i + 1
        marker = outbox_marker([d["_id"] for d in docs], now_us() + 100_000_000)
        coll.insert_many([marker, *docs])
        publisher.start(relay=False)
        publisher.outbox.published([marker["_id"]], [(d["_id"], 1000 + i) for i, d in enumerate(docs)], True)
        wait_until(lambda: coll.count_documents({"_id": marker["_id"]}) == 0)
        assert sorted(d["seq"] for d in coll.find({"user_id": "bulky"})) == list(range(1000, 1300))
    assert rounds[0] == (1, 300)  # tried whole first
    assert [r[0] for r in rounds if sum(r) <= 100][-1] == 1  # the marker in the last round
    assert sum(f for m, f in rounds if m + f <= 100) == 300  # every cursor once, none lost


def test_batcher_holds_new_batches_while_the_clean_up_is_behind(app, stalled, monkeypatch):
    publisher, release = stalled
    monkeypatch.setattr(outbox, "WRITEBACK_BACKLOG_DOCS", 0)
    with app.app_context():
        assert publisher.store(docs_for("quinn", 3)).published  # one marker behind > 0
        coll = notifications_collection()
        later = gevent.spawn(publisher.store, docs_for("quinn", 1))
        assert publisher.outbox.waiting_for_writeback.wait(10)
        assert coll.count_documents({"user_id": "quinn"}) == 3  # the next batch was not inserted
        assert not later.ready()

        release.set()
        stored = later.get(timeout=10)
        assert stored.published
        wait_until(lambda: coll.count_documents({"user_id": "quinn"}) == 4 and not marked(coll, "quinn"))


def test_a_dead_clean_up_does_not_stop_the_store_for_more_than_a_lease(make_app, monkeypatch, caplog):
    app = make_app(PUBLISH_LEASE_SECONDS=1.0)
    publisher = app.extensions["notifications"].publisher
    monkeypatch.setattr(outbox, "WRITEBACK_BACKLOG_DOCS", 0)

    def never_returns(markers: list[Any], fixes: list[tuple[Any, int]]) -> None:
        Event().wait()

    monkeypatch.setattr(publisher.outbox, "_record_cleanups", never_returns)
    with app.app_context():
        assert publisher.store(docs_for("rae", 1)).published
        with gevent.Timeout(10):
            assert publisher.store(docs_for("rae", 1)).published  # after one lease, not never
        assert notifications_collection().count_documents({"user_id": "rae"}) == 2
    # operators see the hold, and how far behind the clean-up was (a lease, give or take)
    assert re.search(
        r"MongoDB is behind: new notifications waited 1\.\d+ s in all, while the oldest "
        r"outbox clean-up was up to [1-9]\.\d s old \(1 markers",
        caplog.text,
    ), caplog.text


def test_a_batch_stored_while_redis_was_down_is_relayed_with_cursors(make_app, own_redis):
    app = make_app(REDIS_URL=own_redis.url, RELAY_INTERVAL_SECONDS=3600)  # only this test relays
    publisher = app.extensions["notifications"].publisher
    with app.app_context():
        own_redis.kill()
        stored = publisher.store(docs_for("uma", 2))
        assert not stored.published and [n["seq"] for n in stored.notifications] == [None, None]
        publisher.outbox.relay_once()  # Redis still down: the batch stays marked for later
        assert len(marked(notifications_collection(), "uma")) == 1
        own_redis.restart()
        assert publisher.outbox.relay_once() == 1  # its lease was released: no waiting
        coll = notifications_collection()
        wait_until(lambda: not marked(coll, "uma"))
        seqs = [d["seq"] for d in coll.find({"user_id": "uma"}).sort("_id", 1)]
        assert all(isinstance(s, int) for s in seqs) and seqs == sorted(seqs) and len(set(seqs)) == 2
        assert publisher.outbox.relay_once() == 0


def upgrade_from(app: Any, legacy: list[dict[str, Any]], indexes: dict[str, list[Any]]) -> Any:
    """Store what an older version left, with its indexes, and run the upgrade; the publisher."""
    from app.store.models import ensure_indexes

    publisher = app.extensions["notifications"].publisher
    publisher.start(relay=False)  # only the test relays
    coll = notifications_collection()
    coll.insert_many(legacy)
    for name, keys in indexes.items():
        coll.create_index(keys, name=name)
    ensure_indexes()  # the old indexes go
    assert set(coll.index_information()) == {"_id_", "user_read_seq", "idem", CREATED_INDEX, DUE_INDEX}
    return publisher


def test_what_an_older_version_left_unpublished_is_adopted_and_relayed(app):
    with app.app_context():
        coll = notifications_collection()
        legacy = docs_for("vic", 2)
        for doc in legacy:  # the old outbox: a flag and a lease per document, no cursor yet
            doc.update(published=False, lease_until=datetime.now(timezone.utc))
        publisher = upgrade_from(app, legacy, {"outbox": [("published", 1), ("lease_until", 1)]})
        assert len(marked(coll, "vic")) == 2
        assert publisher.outbox.relay_once() == 2
        wait_until(lambda: not marked(coll, "vic"))
        seqs = [d["seq"] for d in coll.find({"user_id": "vic"})]
        assert all(isinstance(s, int) for s in seqs) and len(set(seqs)) == 2


PREVIOUS_INDEXES = {"user_unread": [("user_id", 1), ("read", 1)], "user_seq": [("user_id", 1), ("seq", 1)]}


def old_batch(app: Any, user: str, n: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A batch with its cursors, and the marker an older version kept for it (lease, ids)."""
    batch = docs_for(user, n)
    app.extensions["notifications"].publisher.propose_cursors(batch)
    lease = datetime.now(timezone.utc) + timedelta(seconds=10)
    return batch, {"lease_until": lease, "ids": [d["_id"] for d in batch]}


def relayed_once_adopted(publisher: Any, coll: Any, user: str, batch: list[dict[str, Any]]) -> None:
    (marker,) = marked(coll, user)
    assert marker["ids"] == [d["_id"] for d in batch]
    assert publisher.outbox.relay_once() == 1  # due at once: the old lease is not trusted
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


def test_markers_spread_over_the_outbox_partitions_and_none_is_a_users(app, client, auth):
    """On a cluster sharded by user_id, one marker user id would be one hot chunk."""
    users = {outbox_marker([], 0)["user_id"] for _ in range(400)}
    assert len(users) == OUTBOX_PARTITIONS
    for user in users:
        resp = client.post("/api/notifications", json={"user_id": user, "message": "x"}, headers=auth)
        assert resp.status_code == 422 and resp.get_json()["error"]["field"] == "user_id"
    with app.app_context():
        coll = notifications_collection()
        coll.insert_many([outbox_marker([], now_us() + 60_000_000) for _ in range(40)])
        coll.insert_many(docs_for("tilde", 3) + docs_for("zz.top", 3))
        assert coll.count_documents(MARKERS) == 40  # every marker, no notification


def test_a_marker_of_the_single_outbox_user_of_older_versions_is_still_relayed(app):
    publisher = app.extensions["notifications"].publisher
    publisher.start(relay=False)  # only the test relays
    with app.app_context():
        coll = notifications_collection()
        batch = docs_for("una", 2)
        publisher.propose_cursors(batch)
        legacy = {**outbox_marker([d["_id"] for d in batch], now_us() - 1_000_000), "user_id": "~outbox"}
        coll.insert_many([legacy, *batch])
        assert publisher.outbox.relay_once() == 1
        wait_until(lambda: coll.count_documents({"_id": legacy["_id"]}) == 0)
        assert publisher.stats["relayed"] == 2


def test_a_marker_whose_batch_never_arrived_is_dropped_by_the_relay(app):
    publisher = app.extensions["notifications"].publisher
    with app.app_context():
        lost = docs_for("xan", 2)  # the insert failed after the marker and could not be undone
        marker = outbox_marker([d["_id"] for d in lost], now_us() - 1_000_000)
        notifications_collection().insert_one(marker)
        published = publisher.stats["published"]
        assert publisher.outbox.relay_once() == 1
        assert notifications_collection().count_documents({"_id": marker["_id"]}) == 0
        assert publisher.stats["published"] == published


def test_a_first_attempt_that_lands_after_its_retry_is_published_once(app):
    """The retry of a keyed POST was stored and published; then the first attempt's insert,
    held up in a hung MongoDB, arrives: the unique key stops it after its marker, with its
    neighbour in the batch. The relay publishes the neighbour, never the key twice."""
    from pymongo.errors import BulkWriteError

    from app.store.idempotency import RequestKey

    publisher = app.extensions["notifications"].publisher
    key = RequestKey.of("owner", "k-late", b"{}")
    with app.app_context():
        coll = notifications_collection()
        retry = docs_for("zed", 1)
        key.mark(retry)
        assert publisher.store(retry).published
        neighbour, late = docs_for("zoe", 1), docs_for("zed", 1)
        key.mark(late)
        late_batch = [*neighbour, *late]
        marker = outbox_marker([d["_id"] for d in late_batch], now_us() - 1_000_000)  # its lease ran out
        with pytest.raises(BulkWriteError):
            coll.insert_many([marker, *late_batch], ordered=True)
        published = publisher.stats["published"]
        assert publisher.outbox.relay_once() == 1
        assert publisher.stats["published"] == published + 1  # the neighbour, not the key again
        assert [d["_id"] for d in coll.find({"user_id": "zed"})] == [retry[0]["_id"]]
        wait_until(lambda: coll.count_documents({"_id": marker["_id"]}) == 0)


def test_markers_the_previous_version_kept_in_an_outbox_collection_move_in(app):
    with app.app_context():
        coll = notifications_collection()
        batch, old_marker = old_batch(app, "yul", 2)
        coll.database[LEGACY_OUTBOX].insert_one({"_id": batch[0]["_id"], **old_marker})
        publisher = upgrade_from(app, batch, PREVIOUS_INDEXES)
        assert LEGACY_OUTBOX not in coll.database.list_collection_names()
        relayed_once_adopted(publisher, coll, "yul", batch)


def test_batches_published_close_together_share_one_clean_up(make_app, monkeypatch):
    app = make_app(OUTBOX_CLEANUP_DELAY_SECONDS=0.5)
    publisher = app.extensions["notifications"].publisher
    deletes: list[list[Any]] = []
    record = publisher.outbox._record_cleanups

    def counted(markers: list[Any], fixes: list[tuple[Any, int]]) -> None:
        deletes.append(markers)
        record(markers, fixes)

    monkeypatch.setattr(publisher.outbox, "_record_cleanups", counted)
    with app.app_context():
        for _ in range(3):  # three batches, one after the other
            assert publisher.store(docs_for("cy", 1)).published
        wait_until(lambda: not marked(notifications_collection(), "cy"))
    assert [len(markers) for markers in deletes] == [3]


def test_flush_does_the_delayed_clean_up_at_once(make_app):
    app = make_app(OUTBOX_CLEANUP_DELAY_SECONDS=1.0)  # the most a 10 s lease allows
    publisher = app.extensions["notifications"].publisher
    with app.app_context():
        assert publisher.store(docs_for("di", 2)).published
        assert marked(notifications_collection(), "di")  # waiting for company
        assert publisher.outbox.flush(timeout=0.5)  # well before the delay is out
        assert not marked(notifications_collection(), "di")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["deploy", "ctrl-c"])
def test_a_worker_told_to_stop_leaves_no_marker_for_the_relay(live, app, sig):
    """Otherwise a relay would publish the batch a second time once its lease ran out."""
    server = live(workers=1, PUBLISH_LEASE_SECONDS="30", OUTBOX_CLEANUP_DELAY_SECONDS="3")
    server.notify("ed", "last words")
    with app.app_context():
        assert marked(notifications_collection(), "ed")  # the clean-up is still waiting
        server.stop(sig)  # gunicorn's worker_exit hook flushes the clean-up
        assert server.process is not None and server.process.returncode == 0
        assert not marked(notifications_collection(), "ed")


def test_the_clean_up_delay_is_bounded_by_the_lease():
    Config(OUTBOX_CLEANUP_DELAY_SECONDS=0).validate()
    Config(OUTBOX_CLEANUP_DELAY_SECONDS=1.0, PUBLISH_LEASE_SECONDS=10).validate()
    for wrong in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="OUTBOX_CLEANUP_DELAY_SECONDS"):
            Config(OUTBOX_CLEANUP_DELAY_SECONDS=wrong, PUBLISH_LEASE_SECONDS=10).validate()
