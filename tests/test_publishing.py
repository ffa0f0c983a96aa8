"""The write path's outbox: leases, the cursor write-back and the relay, on real servers."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import gevent
import pytest
from gevent.event import Event

from app import publishing
from app.models import notifications_collection
from app.serialization import new_document


@pytest.fixture
def stalled(app: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Event]:
    """The app's publisher with its cursor write-back held until the returned event is set."""
    publisher = app.extensions["notifications"].publisher
    release = Event()
    record = publisher._record_cursors

    def slow_record(pairs: list[tuple[Any, int]]) -> None:
        release.wait()
        record(pairs)

    monkeypatch.setattr(publisher, "_record_cursors", slow_record)
    return publisher, release


def docs_for(user: str, n: int, lease: datetime) -> list[dict[str, Any]]:
    now = datetime.now(timezone.utc)
    return [new_document(user, f"m{i}", "", "", {}, now, lease) for i in range(n)]


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    with gevent.Timeout(timeout):
        while not predicate():
            gevent.sleep(0.01)


def test_lease_is_taken_at_insert_and_relay_leaves_pending_write_backs_alone(app, stalled):
    publisher, release = stalled
    spent = datetime.now(timezone.utc) - timedelta(minutes=5)  # as if the job had queued for long
    with app.app_context():
        stored = publisher.store(docs_for("pat", 3, spent))
        assert stored.published
        coll = notifications_collection()
        rows = list(coll.find({"user_id": "pat"}))
        assert len(rows) == 3 and all(not r["published"] for r in rows)  # cursor not recorded yet
        assert all(r["lease_until"].replace(tzinfo=timezone.utc) > datetime.now(timezone.utc) for r in rows)

        # the lease runs out while the write-back is still behind: the relay must not publish again
        coll.update_many({"user_id": "pat"}, {"$set": {"lease_until": spent}})
        published = publisher.stats["published"]
        assert publisher.relay_once() == 0
        assert publisher.stats["published"] == published

        release.set()
        wait_until(lambda: coll.count_documents({"user_id": "pat", "published": True}) == 3)
        seqs = sorted(r["seq"] for r in coll.find({"user_id": "pat"}))
        assert seqs == sorted(n["seq"] for n in stored.notifications) and len(set(seqs)) == 3
        assert publisher.relay_once() == 0


def test_batcher_holds_new_batches_while_the_write_back_is_behind(app, stalled, monkeypatch):
    publisher, release = stalled
    monkeypatch.setattr(publishing, "WRITEBACK_BACKLOG_DOCS", 2)
    lease = datetime.now(timezone.utc)
    with app.app_context():
        assert publisher.store(docs_for("quinn", 3, lease)).published  # 3 cursors behind > 2
        coll = notifications_collection()
        later = gevent.spawn(publisher.store, docs_for("quinn", 1, lease))
        assert publisher.waiting_for_writeback.wait(10)
        assert coll.count_documents({"user_id": "quinn"}) == 3  # the next batch was not inserted
        assert not later.ready()

        release.set()
        stored = later.get(timeout=10)
        assert stored.published
        wait_until(lambda: coll.count_documents({"user_id": "quinn", "published": True}) == 4)


def test_a_dead_write_back_does_not_stop_the_store_for_more_than_a_lease(make_app, monkeypatch, caplog):
    app = make_app(PUBLISH_LEASE_SECONDS=1.0)
    publisher = app.extensions["notifications"].publisher
    monkeypatch.setattr(publishing, "WRITEBACK_BACKLOG_DOCS", 0)
    monkeypatch.setattr(publisher, "_record_cursors", lambda pairs: Event().wait())  # never returns
    lease = datetime.now(timezone.utc)
    with app.app_context():
        assert publisher.store(docs_for("rae", 1, lease)).published
        with gevent.Timeout(10):
            assert publisher.store(docs_for("rae", 1, lease)).published  # after one lease, not never
        assert notifications_collection().count_documents({"user_id": "rae"}) == 2
    assert "MongoDB is behind: new notifications waited" in caplog.text  # operators see the hold
