"""A worker started on a database without its indexes: it makes them, or says so."""

from __future__ import annotations

from typing import Any

import requests
from pymongo import MongoClient

from app.store.models import EITHER_READ, MARKERS
from tests.support import wait_until, winning_stages
from tests.test_metrics import sample

# api_keys' unique indexes are made by mongoengine itself when the collection is first used.
EXPECTED = [
    "notifications.user_read_seq",
    "notifications.idem",
    "notifications.created",
    "notifications.due",
    "audit_log.newest",
    "audit_log.target_newest",
    "push_subscriptions.user_newest",
    "pending_pushes.due",
    "pending_pushes.user",
    "topic_subscribers.topic_user",
    "fanouts.state_lease",
    "fanouts.idem",
]


def ready(url: str) -> requests.Response:
    return requests.get(url + "/readyz", timeout=5)


def test_worker_started_without_cli_step_creates_indexes(live: Any, stack: Any) -> None:
    db = MongoClient(stack.mongo_uri, directConnection=True).get_database()
    assert db.list_collection_names() == []  # an empty database, no `db create-indexes`
    server = live(workers=2)
    wait_until(lambda: ready(server.url).status_code == 200, timeout=15)
    coll = db.notifications
    server.notify("ix-user", "hello")
    poll = coll.find(MARKERS, {"seq": 1}).explain()["queryPlanner"]["winningPlan"]  # the relay's
    page = coll.find({"user_id": "ix-user", "read": EITHER_READ}).sort("seq", -1).limit(21)
    page_plan = page.explain()["queryPlanner"]["winningPlan"]
    assert "IXSCAN" in winning_stages(poll) and "COLLSCAN" not in winning_stages(poll)
    assert "IXSCAN" in winning_stages(page_plan) and "COLLSCAN" not in winning_stages(page_plan)
    created = [line for line in server.log().splitlines() if "created missing MongoDB indexes" in line]
    assert 1 <= len(created) <= 2  # by the worker(s) that found them missing
    assert all(any(name in line for line in created) for name in EXPECTED), created

    server.stop()
    again = live(workers=1)
    wait_until(lambda: ready(again.url).status_code == 200, timeout=15)
    assert "created missing MongoDB indexes" not in again.log_path.read_text().split("Booting worker")[-1]


def test_readyz_names_missing_indexes_when_creation_is_off(live: Any, stack: Any) -> None:
    server = live(workers=1, AUTO_CREATE_INDEXES="0")
    wait_until(lambda: "indexes missing" in server.log(), timeout=15)
    resp = ready(server.url)
    body = resp.json()
    assert resp.status_code == 503 and body["checks"]["indexes"] == "missing"
    assert body["missing_indexes"] == EXPECTED
    assert "notifications.user_read_seq" in body["error"]["message"]
    metrics = requests.get(server.url + "/metrics", timeout=5).text
    assert sample(metrics, "notify_mongodb_indexes_missing") == len(EXPECTED)
    db = MongoClient(stack.mongo_uri, directConnection=True).get_database()
    assert "user_read_seq" not in db.notifications.index_information()  # it did not create them
    # Reads named to the missing index are answered without it (slower), not refused
    server.notify("ix-none", "still read")
    history = requests.get(
        server.url + "/api/users/ix-none/notifications",
        headers={"Authorization": f"Bearer {server.stack.api_key}"},
        timeout=10,
    )
    assert history.status_code == 200, history.text
    assert [n["message"] for n in history.json()["notifications"]] == ["still read"]


def test_an_index_made_by_other_means_is_kept_and_the_rest_created(live: Any, stack: Any) -> None:
    """SecantusDB refuses a create_index whose options differ from the existing index of
    that name (mongoengine adds ``background: false``): only what is missing is created."""
    db = MongoClient(stack.mongo_uri, directConnection=True).get_database()
    db.notifications.create_index([("user_id", 1), ("read", 1), ("seq", 1)], name="user_read_seq")
    server = live(workers=1)
    wait_until(lambda: ready(server.url).status_code == 200, timeout=15)
    wait_until(lambda: "created missing MongoDB indexes" in server.log(), timeout=15)  # logged once made
    created = [line for line in server.log().splitlines() if "created missing MongoDB indexes" in line]
    assert created and all("user_read_seq" not in line for line in created)
    assert any("notifications.idem" in line for line in created)


def test_keyed_posts_right_after_start_all_succeed(live: Any, stack: Any) -> None:
    """The first keyed POSTs race the workers' own index set-up for the ``idem`` index:
    whichever makes it, none of them fails for it."""
    import gevent.pool

    server = live(workers=2)  # no wait for /readyz: the set-up may still be running
    pool = gevent.pool.Pool(16)
    body = {"user_id": "ix-race", "message": "m"}
    statuses = pool.map(
        lambda i: server.post("/api/notifications", body, **{"Idempotency-Key": f"race-{i}"}).status_code,
        range(32),
    )
    assert statuses == [201] * 32
