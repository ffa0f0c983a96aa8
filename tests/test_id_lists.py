"""Every call the service makes by a list of ids names at most MAX_IDS_PER_CALL of them.

SecantusDB checks ``$in`` against each listed value in turn, so one delete of 1,000 ids
held the notifications collection (and every insert) for about 2 s, 5,000 for 40 s
(bench/README.md, "Calls by a list of ids")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import monitoring

from app.store import retention
from app.store.models import MAX_IDS_PER_CALL, notifications_collection
from tests.support import backdated, docs_for, store_unpublished, wait_until


class IdLists(monitoring.CommandListener):
    """The longest ``_id: {$in: [...]}`` list of each command sent to one database."""

    def __init__(self) -> None:
        self.database: str | None = None
        self.longest: dict[str, int] = {}

    def started(self, event: Any) -> None:
        if event.database_name != self.database:
            return
        command = event.command
        filters = [command.get("filter") or {}]
        filters += [op.get("q") or {} for op in command.get("deletes", []) + command.get("updates", [])]
        for query in filters:
            ids = query.get("_id")
            if isinstance(ids, dict) and "$in" in ids:
                name = event.command_name
                self.longest[name] = max(self.longest.get(name, 0), len(ids["$in"]))

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


LISTENER = IdLists()
monitoring.register(LISTENER)  # before any app's client exists: clients copy the listeners


@pytest.fixture
def id_lists(stack: Any) -> Iterator[IdLists]:
    LISTENER.database, LISTENER.longest = stack.mongo_uri.rsplit("/", 1)[1], {}
    yield LISTENER
    LISTENER.database = None


def test_bulk_send_relay_mark_read_and_retention_stay_under_the_cap(
    make_app: Any, auth: dict[str, str], id_lists: IdLists
) -> None:
    app = make_app(RETENTION_DAYS=30)
    client = app.test_client()
    service = app.extensions["notifications"]
    with app.app_context():
        users = [f"bulk-{i}" for i in range(1000)]
        resp = client.post("/api/notifications", json={"user_ids": users, "message": "hi"}, headers=auth)
        assert resp.status_code == 201
        service.publisher.outbox.flush(5)

        relayed = docs_for("relay-user", 1000)
        store_unpublished(relayed, lease_seconds=-1)
        assert service.publisher.outbox.relay_once() == 1
        service.publisher.outbox.flush(5)
        coll = notifications_collection()
        assert coll.count_documents({"user_id": "~outbox"}) == 0

        ids = [str(d["_id"]) for d in relayed]
        assert service.change("relay-user", "read", ids) == 1000

        coll.insert_many([backdated("old-user", 40, f"old{i}") for i in range(1000)])
        assert retention.prune(coll, 30) == 1000
    wait_until(lambda: {"find", "update", "delete"} <= set(id_lists.longest))
    assert max(id_lists.longest.values()) <= MAX_IDS_PER_CALL, id_lists.longest
