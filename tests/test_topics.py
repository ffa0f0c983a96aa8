"""Topics: subscriptions paged by user id, and a topic POST fanned out to every subscriber
page by page, once each, resumed by another instance when the one sending it dies."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import gevent
import orjson
import pytest
import requests
from bson import ObjectId
from flask import Flask

from app.store.indexes import create_indexes
from app.store.models import notifications_collection
from app.topics.fanout import copy_key
from app.topics.models import fanouts_collection
from tests.support import SSEClient, wait_until


@pytest.fixture
def make_app(make_app: Callable[..., Flask]) -> Callable[..., Flask]:
    """Apps on a database with every index (a worker makes them at start, app/store/indexes.py)."""

    def factory(**overrides: Any) -> Flask:
        app = make_app(**overrides)
        create_indexes()
        return app

    return factory


def send(client: Any, method: str, path: str, body: Any, auth: dict[str, str], **headers: str) -> Any:
    data = body if isinstance(body, (bytes, str)) else orjson.dumps(body)
    return client.open(
        path, method=method, data=data, headers={**auth, "Content-Type": "application/json", **headers}
    )


def subscribe(client: Any, topic: str, users: list[str], auth: dict[str, str]) -> Any:
    return send(client, "PUT", f"/api/topics/{topic}/subscribers", {"user_ids": users}, auth)


def copies(user: str) -> list[dict[str, Any]]:
    return list(notifications_collection().find({"user_id": user}))


def test_subscribe_unsubscribe_and_list_in_pages(client, auth):
    users = [f"u{i:03d}" for i in range(250)]
    first = subscribe(client, "news", users[:200], auth)
    assert first.status_code == 200 and first.get_json() == {"topic": "news", "subscribed": 200}
    again = subscribe(client, "news", users[150:], auth)  # 50 already there
    assert again.get_json()["subscribed"] == 50
    gone = send(
        client, "DELETE", "/api/topics/news/subscribers", {"user_ids": ["u000", "u001", "nobody"]}, auth
    )
    assert gone.status_code == 200 and gone.get_json() == {"topic": "news", "unsubscribed": 2}
    listed, after = [], None
    while True:
        query = {"limit": 64, **({"after": after} if after else {})}
        page = client.get("/api/topics/news/subscribers", query_string=query, headers=auth).get_json()
        assert page["topic"] == "news" and len(page["subscribers"]) <= 64
        listed += page["subscribers"]
        after = page["next"]
        if after is None:
            break
    assert listed == users[2:]  # in user id order, every one once
    other = client.get("/api/topics/other/subscribers", headers=auth).get_json()
    assert other == {"topic": "other", "subscribers": [], "next": None, "total": 0}
    assert page["total"] == 248


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("PUT", "/api/topics/bad%20name/subscribers", {"user_ids": ["a"]}, "topic"),
        ("PUT", "/api/topics/" + "t" * 129 + "/subscribers", {"user_ids": ["a"]}, "topic"),
        ("PUT", "/api/topics/ok/subscribers", {"user_ids": []}, "user_ids"),
        ("PUT", "/api/topics/ok/subscribers", {"user_ids": ["a", "a"]}, "user_ids"),
        ("PUT", "/api/topics/ok/subscribers", {"user_ids": [f"u{i}" for i in range(1001)]}, "user_ids"),
        ("DELETE", "/api/topics/ok/subscribers", {"users": ["a"]}, "users"),
        ("DELETE", "/api/topics/ok/subscribers", {"user_ids": ["no spaces"]}, "user_ids"),
        ("POST", "/api/notifications", {"topic": "a b", "message": "m"}, "topic"),
        ("POST", "/api/notifications", {"topic": 7, "message": "m"}, "topic"),
        ("POST", "/api/notifications", {"topic": "ok", "user_id": "a", "message": "m"}, "topic"),
        ("POST", "/api/notifications", {"topic": "ok", "user_ids": ["a"], "message": "m"}, "topic"),
        ("POST", "/api/notifications", {"topic": "ok"}, "message"),
        ("POST", "/api/notifications", {"topic": "ok", "message": "m", "priority": "max"}, "priority"),
    ],
)
def test_topic_fields_are_validated_by_name(client, auth, method, path, body, field):
    resp = send(client, method, path, body, auth)
    assert resp.status_code == 422, resp.text
    assert resp.get_json()["error"]["field"] == field


def test_listing_and_progress_arguments_are_validated(client, auth):
    bad_after = client.get("/api/topics/ok/subscribers?after=a%20b", headers=auth)
    assert bad_after.status_code == 422 and bad_after.get_json()["error"]["field"] == "after"
    bad_limit = client.get("/api/topics/ok/subscribers?limit=1001", headers=auth)
    assert bad_limit.status_code == 422 and bad_limit.get_json()["error"]["field"] == "limit"
    assert client.get("/api/topics/ok/subscribers").status_code == 401
    assert client.get("/api/fanouts/nope", headers=auth).status_code == 422
    assert client.get("/api/fanouts/" + "0" * 24, headers=auth).status_code == 404


def test_a_topic_post_answers_at_once_and_a_retry_gets_the_same_fanout(client, auth):
    body = {"topic": "deploys", "message": "v2 is out"}
    first = send(client, "POST", "/api/notifications", body, auth, **{"Idempotency-Key": "fan-1"})
    assert first.status_code == 202, first.text
    fanout = first.get_json()
    assert fanout["topic"] == "deploys" and fanout["state"] == "pending" and fanout["done"] == 0
    assert first.headers["Location"] == f"/api/fanouts/{fanout['id']}"
    progress = client.get(first.headers["Location"], headers=auth).get_json()
    assert progress == fanout
    again = send(client, "POST", "/api/notifications", body, auth, **{"Idempotency-Key": "fan-1"})
    assert again.status_code == 202 and again.get_json()["id"] == fanout["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = {**body, "message": "another"}
    conflict = send(client, "POST", "/api/notifications", other, auth, **{"Idempotency-Key": "fan-1"})
    assert conflict.status_code == 409
    assert fanouts_collection().count_documents({}) == 1


def test_concurrent_topic_posts_with_one_key_make_one_fanout(client, auth):
    body = {"topic": "t", "message": "once"}
    key = {"Idempotency-Key": "same"}
    posts = gevent.joinall(
        [gevent.spawn(send, client, "POST", "/api/notifications", body, auth, **key) for _ in range(6)]
    )
    assert {p.value.status_code for p in posts} == {202}
    assert len({p.value.get_json()["id"] for p in posts}) == 1
    assert fanouts_collection().count_documents({}) == 1


def test_a_fanout_sends_one_copy_per_subscriber_page_by_page(make_app: Callable[..., Flask], auth):
    app = make_app(FANOUT_PAGE_SIZE=7)
    client = app.test_client()
    users = [f"p{i:02d}" for i in range(30)]
    subscribe(client, "team", users, auth)
    subscribe(client, "elsewhere", ["outsider"], auth)
    body = {"topic": "team", "message": "standup", "title": "Now", "data": {"room": 4}, "priority": "high"}
    fanout = send(client, "POST", "/api/notifications", body, auth).get_json()
    worker = app.extensions["topics"].worker
    claimed = worker.claim()
    assert claimed is not None and str(claimed["_id"]) == fanout["id"] and worker.claim() is None
    worker.run(claimed)
    progress = client.get(f"/api/fanouts/{fanout['id']}", headers=auth).get_json()
    assert (progress["state"], progress["done"], progress["total"]) == ("done", 30, 30)
    assert progress["started_at"] and progress["finished_at"] >= progress["started_at"]
    assert fanouts_collection().find_one({})["pages"] == 5  # 7+7+7+7+2
    for user in users:
        (copy,) = copies(user)
        assert (copy["message"], copy["title"], copy["data"], copy["priority"]) == (
            "standup",
            "Now",
            {"room": 4},
            "high",
        )
    assert copies("outsider") == []
    inbox = client.get("/api/users/p03/notifications", headers=auth).get_json()["notifications"]
    assert [n["message"] for n in inbox] == ["standup"] and isinstance(inbox[0]["seq"], int)
    assert worker.claim() is None  # done: nobody takes it again


def test_a_page_redone_after_a_crash_before_its_progress_write_adds_no_copy(make_app, auth):
    """The worker stored a page, then died before recording it: the next one redoes the page
    and stores only the copies that are missing."""
    app = make_app(FANOUT_PAGE_SIZE=10)
    client = app.test_client()
    users = [f"r{i:02d}" for i in range(25)]
    subscribe(client, "ops", users, auth)
    fanout = send(client, "POST", "/api/notifications", {"topic": "ops", "message": "page"}, auth).get_json()
    worker = app.extensions["topics"].worker
    claimed = worker.claim()
    worker.store_page(claimed, users[:6])  # the crashed attempt got this far into page one
    fanouts_collection().update_one(
        {"_id": claimed["_id"]}, {"$set": {"lease_until": 0}}
    )  # its lease ran out
    again = worker.claim()
    assert again is not None and again["after"] == "" and again["claim"] != claimed["claim"]
    worker.run(again)
    for user in users:
        assert [c["idem"] for c in copies(user)] == [copy_key(claimed["_id"], user)]
    progress = client.get(f"/api/fanouts/{fanout['id']}", headers=auth).get_json()
    assert (progress["state"], progress["done"]) == ("done", 25)


def test_a_worker_that_lost_its_lease_stops_at_its_next_progress_write(make_app, auth):
    app = make_app(FANOUT_PAGE_SIZE=5)
    client = app.test_client()
    subscribe(client, "lost", [f"l{i}" for i in range(20)], auth)
    send(client, "POST", "/api/notifications", {"topic": "lost", "message": "m"}, auth)
    worker = app.extensions["topics"].worker
    claimed = worker.claim()
    fanouts_collection().update_one({"_id": claimed["_id"]}, {"$set": {"claim": "someone else"}})
    worker.run(claimed)
    doc = fanouts_collection().find_one({})
    assert doc["state"] == "running" and doc["done"] == 0  # left to the worker holding it
    assert notifications_collection().count_documents({"user_id": {"$lt": "~"}}) == 5  # one page, keyed


def test_the_dashboard_overview_shows_fanouts(make_app, auth):
    from tests.test_dashboard import ADMIN, PASSWORD, signed_in

    app = make_app(ADMIN_USERNAME=ADMIN, ADMIN_PASSWORD=PASSWORD)
    client = app.test_client()
    subscribe(client, "release-notes", ["a", "b"], auth)
    fanout = send(
        client, "POST", "/api/notifications", {"topic": "release-notes", "message": "m"}, auth
    ).get_json()
    page = signed_in(app).get("/dashboard").text
    assert page.count('id="fanouts"') == 1 and "<title>Overview" in page
    assert fanout["id"] in page and "release-notes" in page and "pending" in page


def _stream_users(url: str, server: Any, users: list[str]) -> dict[str, SSEClient]:
    streams = {user: SSEClient(url, server.token(user)) for user in users}
    for stream in streams.values():
        stream.wait_for(lambda s=stream: any(e["type"] == "connected" for e in s.events), timeout=10)
    return streams


def _messages(streams: dict[str, SSEClient], message: str) -> dict[str, int]:
    return {user: s.messages().count(message) for user, s in streams.items()}


def put_subscribers(server: Any, topic: str, users: list[str]) -> None:
    resp = requests.put(
        f"{server.url}/api/topics/{topic}/subscribers",
        data=orjson.dumps({"user_ids": users}),
        headers={"Authorization": f"Bearer {server.stack.api_key}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text


def _fanout(server: Any, fanout_id: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {server.stack.api_key}"}
    return requests.get(f"{server.url}/api/fanouts/{fanout_id}", headers=headers, timeout=10).json()


def test_a_topic_post_reaches_subscribers_on_two_instances_exactly_once(live, app):
    fast = {"FANOUT_PAGE_SIZE": "4", "FANOUT_POLL_SECONDS": "0.2"}
    one, two = live(**fast), live(**fast)
    users = [f"s{i:02d}" for i in range(20)]
    put_subscribers(one, "all-hands", users)
    streams = {**_stream_users(one.url, one, users[:10:3]), **_stream_users(two.url, two, users[10::3])}
    try:
        posted = two.post("/api/notifications", {"topic": "all-hands", "message": "town hall"})
        assert posted.status_code == 202, posted.text
        fid = posted.json()["id"]
        wait_until(lambda: _fanout(one, fid)["state"] == "done", timeout=15)
        for stream in streams.values():
            stream.wait_for(lambda s=stream: "town hall" in s.messages(), timeout=10)
        assert set(_messages(streams, "town hall").values()) == {1}
        assert _fanout(two, fid)["done"] == 20
        assert all(len(copies(u)) == 1 for u in users)
    finally:
        for stream in streams.values():
            stream.close()


def test_a_fanout_whose_instance_is_killed_is_finished_by_another(live, app):
    """SIGKILL the instance sending a fan-out halfway: the other resumes it after the lease;
    every subscriber has exactly one copy, and a connected one received it once."""
    lease = {"FANOUT_LEASE_SECONDS": "2", "FANOUT_POLL_SECONDS": "0.2", "PUBLISH_LEASE_SECONDS": "2"}
    sender = live(FANOUT_PAGE_SIZE="5", FANOUT_PAGE_INTERVAL_SECONDS="0.15", **lease)
    survivor = live(FANOUT_PAGE_SIZE="5", **lease)
    users = [f"k{i:03d}" for i in range(100)]
    put_subscribers(survivor, "big", users)
    streams = _stream_users(survivor.url, survivor, [users[0], users[50], users[99]])
    try:
        posted = sender.post("/api/notifications", {"topic": "big", "message": "resumed"})
        assert posted.status_code == 202, posted.text
        fid = posted.json()["id"]
        wait_until(lambda: _fanout(survivor, fid)["done"] >= 20, timeout=15)
        sender.kill()
        halfway = _fanout(survivor, fid)
        assert halfway["state"] == "running" and halfway["done"] < 100
        wait_until(lambda: _fanout(survivor, fid)["state"] == "done", timeout=20)
        assert _fanout(survivor, fid)["done"] == _fanout(survivor, fid)["total"] == 100
        assert [u for u in users if len(copies(u)) != 1] == []
        for stream in streams.values():
            stream.wait_for(lambda s=stream: "resumed" in s.messages(), timeout=10)
        assert set(_messages(streams, "resumed").values()) == {1}
    finally:
        for stream in streams.values():
            stream.close()


def test_a_worker_told_to_stop_hands_its_fanout_over_without_waiting_for_the_lease(live, app):
    lease = {"FANOUT_LEASE_SECONDS": "60", "FANOUT_POLL_SECONDS": "0.2"}
    sender = live(FANOUT_PAGE_SIZE="5", FANOUT_PAGE_INTERVAL_SECONDS="0.15", **lease)
    survivor = live(FANOUT_PAGE_SIZE="5", **lease)
    users = [f"h{i:03d}" for i in range(100)]
    put_subscribers(survivor, "handover", users)
    fid = sender.post("/api/notifications", {"topic": "handover", "message": "handed"}).json()["id"]
    wait_until(lambda: _fanout(survivor, fid)["done"] >= 20, timeout=15)
    sender.stop(signal.SIGTERM)
    wait_until(lambda: _fanout(survivor, fid)["state"] == "done", timeout=15)  # not after 60 s
    resumed = [
        line for line in survivor.log().splitlines() if f"fan-out {fid}" in line and "resuming" in line
    ]
    assert len(resumed) == 1 and "resuming after ''" not in resumed[0], survivor.log()
    assert [u for u in users if len(copies(u)) != 1] == []


def test_a_page_stored_by_a_worker_that_died_before_publishing_it_is_sent_once(live, app):
    """The sending worker dies between a page's insert and its publish: the outbox relay of
    the other instance publishes that page, whose redo stores nothing more."""
    lease = {"FANOUT_LEASE_SECONDS": "2", "FANOUT_POLL_SECONDS": "0.2", "PUBLISH_LEASE_SECONDS": "2"}
    sender = live(FANOUT_PAGE_SIZE="5", TEST_CRASH_AFTER_INSERT="1", **lease)
    survivor = live(FANOUT_PAGE_SIZE="5", **lease)
    users = [f"c{i:02d}" for i in range(12)]
    put_subscribers(survivor, "crash", users)
    streams = _stream_users(survivor.url, survivor, [users[0], users[11]])
    try:
        fid = sender.post("/api/notifications", {"topic": "crash", "message": "once"}).json()["id"]
        wait_until(lambda: all(len(copies(u)) == 1 for u in users[:5]), timeout=10)
        sender.kill()  # its restarted worker would die the same way
        wait_until(lambda: _fanout(survivor, fid)["state"] == "done", timeout=20)
        assert _fanout(survivor, fid)["done"] == 12
        assert [u for u in users if len(copies(u)) != 1] == []
        for stream in streams.values():
            stream.wait_for(lambda s=stream: "once" in s.messages(), timeout=10)
        assert set(_messages(streams, "once").values()) == {1}
    finally:
        for stream in streams.values():
            stream.close()


def test_finished_fanouts_age_out_with_the_notifications(make_app: Callable[..., Flask], auth):
    """Retention's pass deletes fan-outs that finished longer ago than ``RETENTION_DAYS``
    (done or failed), not the recent ones nor those still to run."""
    app = make_app(RETENTION_DAYS=1)
    client = app.test_client()
    subscribe(client, "aging", ["a1", "a2"], auth)
    ids = [send(client, "POST", "/api/notifications", {"topic": "aging", "message": m}, auth).get_json()["id"]
           for m in ("old", "recent", "waiting")]  # fmt: skip
    worker = app.extensions["topics"].worker
    for _ in range(2):
        worker.run(worker.claim())
    states = {str(d["_id"]): d for d in fanouts_collection().find({})}
    assert [states[i]["state"] for i in ids] == ["done", "done", "pending"]
    assert states[ids[1]]["lease_until"] > 0, "a finished fan-out's lease_until is when it finished"
    two_days_us = 2 * 86400 * 1_000_000
    fanouts_collection().update_one({"_id": ObjectId(ids[0])}, {"$inc": {"lease_until": -two_days_us}})
    fanouts_collection().update_one({"_id": ObjectId(ids[2])}, {"$set": {"lease_until": 1}})
    assert app.extensions["notifications"].retention.sweep_once() is not None
    assert sorted(str(d["_id"]) for d in fanouts_collection().find({})) == sorted(ids[1:])
