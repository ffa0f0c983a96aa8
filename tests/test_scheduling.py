"""Scheduled notifications (``send_at``): stored at once, out of the inbox until due, sent
on time by exactly one instance (also when the one that claimed it dies), cancellable
until sent; and their validation."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
import redis
import requests
from bson import ObjectId
from pymongo import MongoClient

from app.store.serialization import iso
from tests.support import SSEClient, WSClient, wait_until
from tests.test_metrics import sample

SENT = "notify_notifications_scheduled_sent_total"


def at(seconds: float) -> str:
    return iso(datetime.now(timezone.utc) + timedelta(seconds=seconds))


def api(server: Any, method: str, path: str, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {server.stack.api_key}"}
    return requests.request(method, server.url + path, headers=headers, timeout=10, **kwargs)


def inbox(server: Any, user: str) -> list[str]:
    resp = api(server, "GET", f"/api/users/{user}/notifications")
    assert resp.status_code == 200, resp.text
    return [n["id"] for n in resp.json()["notifications"]]


def replayed(stack: Any, user: str) -> list[dict[str, Any]]:
    """The notifications in the user's Redis replay list: one entry per publish."""
    entries = redis.Redis.from_url(stack.redis_url).lrange(f"{stack.prefix}replay:{{{user}}}", 0, -1)
    return [orjson.loads(e.split(b"\t", 1)[1]) for e in entries if e.split(b"\t", 1)[1][:1] == b"{"]


def schedule(server: Any, user: str, seconds: float, message: str = "later", **extra: Any) -> dict[str, Any]:
    body = {"user_id": user, "message": message, "send_at": at(seconds), **extra}
    resp = server.post("/api/notifications", body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_scheduled_notification_arrives_on_time_not_before(live):
    server = live(workers=1)
    token = server.token("sched")
    sse, ws = SSEClient(server.url, token), WSClient(server.url, token)
    try:
        created = schedule(server, "sched", 2.0)
        send_at = datetime.fromisoformat(created["send_at"])
        assert created["seq"] is None and created["created_at"] == created["send_at"]
        assert inbox(server, "sched") == []
        counts = api(server, "GET", "/api/users/sched/counts").json()
        assert counts == {"unseen": 0, "unread": 0, "total": 0}
        trace = api(server, "GET", f"/api/notifications/{created['id']}").json()
        assert (trace["send_at"], trace["sent"], trace["sent_at"]) == (created["send_at"], False, None)
        now = server.notify("sched-now", "at once")
        trace_now = api(server, "GET", f"/api/notifications/{now['id']}").json()
        assert "send_at" not in trace_now and (trace_now["sent"], trace_now["sent_at"]) == (True, None)
        other = server.notify("sched", "sent at once")
        resumed = SSEClient(server.url, token, last_event_id="0")  # a replay from the start
        try:
            resumed.wait_count(1)
            assert [e["notification"]["id"] for e in resumed.notifications()] == [other["id"]]
        finally:
            resumed.close()

        for client in (sse, ws):
            client.wait_count(2, timeout=10)
        arrived = datetime.now(timezone.utc)
        assert send_at - timedelta(milliseconds=50) <= arrived < send_at + timedelta(seconds=2.5)
        for client in (sse, ws):
            _, event = client.notifications()
            assert event["notification"]["id"] == created["id"] and event["notification"]["seq"] is not None
        assert inbox(server, "sched") == [created["id"], other["id"]]
        assert api(server, "GET", "/api/users/sched/counts").json()["unread"] == 2
        trace = api(server, "GET", f"/api/notifications/{created['id']}").json()
        assert trace["sent"] is True and trace["sent_at"] >= created["send_at"]
        assert trace["seq"] == sse.notifications()[1]["notification"]["seq"]
    finally:
        sse.close()
        ws.close()


def test_cancel_before_it_is_sent_and_not_after(live):
    server = live(workers=1)
    waiting = schedule(server, "cancel", 3600)
    resp = api(server, "DELETE", f"/api/notifications/{waiting['id']}")
    assert resp.status_code == 200 and resp.json() == {"cancelled": waiting["id"]}
    assert api(server, "GET", f"/api/notifications/{waiting['id']}").status_code == 404
    again = api(server, "DELETE", f"/api/notifications/{waiting['id']}")
    assert again.status_code == 404 and again.json()["error"]["code"] == "not_found"

    sent = server.notify("cancel", "now")
    late = api(server, "DELETE", f"/api/notifications/{sent['id']}")
    assert late.status_code == 409 and late.json()["error"]["code"] == "already_sent"
    assert "/api/users/<user_id>/notifications/<id>" in late.json()["error"]["message"]
    assert inbox(server, "cancel") == [sent["id"]]
    bad = api(server, "DELETE", "/api/notifications/nope")
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "id"


def test_a_long_delay_is_kept_in_mongodb_until_due(live, stack):
    """Nothing of the schedule is in memory: a notification due in a year waits in MongoDB,
    found through the sparse ``due`` index, and a restarted instance still knows it."""
    server = live(workers=1)
    far = schedule(server, "far", 365 * 86400)
    db = MongoClient(stack.mongo_uri).get_default_database()
    doc = db.notifications.find_one({"_id": ObjectId(far["id"])})
    assert doc["read"] is None and doc["due_at"] == doc["send_at"]
    wait_until(lambda: "due" in db.notifications.index_information())  # the worker's index set-up
    plan = db.notifications.find({"due_at": {"$lte": datetime.now(timezone.utc)}}).explain()
    assert '"indexName":"due"' in orjson.dumps(plan["queryPlanner"]["winningPlan"], default=str).decode()
    server.kill()
    again = live(workers=1)
    assert api(again, "GET", f"/api/notifications/{far['id']}").json()["sent"] is False


def test_past_send_at_sends_now(live):
    server = live(workers=1)
    sse = SSEClient(server.url, server.token("past"))
    try:
        created = schedule(server, "past", -60)
        assert created["seq"] is not None and "send_at" not in created
        sse.wait_count(1)
    finally:
        sse.close()


def test_two_instances_never_both_send_one(live, stack):
    a, b = live(workers=2), live(workers=2)
    sse = SSEClient(a.url, a.token("race"))
    try:
        ids = [schedule(a if i % 2 else b, "race", 2.0, f"m{i}")["id"] for i in range(40)]
        sse.wait_count(40, timeout=15)
        delivered = [e["notification"]["id"] for e in sse.notifications()]
        assert sorted(delivered) == sorted(ids)
        published = [n["id"] for n in replayed(stack, "race")]
        assert sorted(published) == sorted(ids), "each published exactly once"
        db = MongoClient(stack.mongo_uri).get_default_database()
        waiting = {"user_id": "race", "due_at": {"$exists": True}}
        wait_until(lambda: not db.notifications.count_documents(waiting))
        assert sorted(n["id"] for n in replayed(stack, "race")) == sorted(ids), "and no later second send"
        sent = [sample(requests.get(s.url + "/metrics", timeout=5).text, SENT) for s in (a, b)]
        assert sum(sent) == 40
    finally:
        sse.close()


def test_instance_killed_mid_claim_leaves_it_to_another(live, stack):
    lease = 2.0
    crashing = live(workers=1, TEST_CRASH_AFTER_CLAIM="1", SCHEDULE_LEASE_SECONDS=str(lease))
    created = schedule(crashing, "orphan", 0.5)
    db = MongoClient(stack.mongo_uri).get_default_database()
    wait_until(lambda: db.notifications.find_one({"claim": {"$exists": True}}) is not None, timeout=10)
    crashing.kill()
    assert api_down(crashing)
    lease_end = db.notifications.find_one({"_id": ObjectId(created["id"])})["due_at"]  # the last claim's
    healthy = live(workers=1, SCHEDULE_LEASE_SECONDS=str(lease))
    # It may be sent before a stream could connect to the new instance: read where it went.
    wait_until(lambda: inbox(healthy, "orphan") == [created["id"]], timeout=15)
    sent = db.notifications.find_one({"_id": ObjectId(created["id"])})
    assert sent["sent_at"] >= lease_end, "not before the dead instance's lease ended"
    assert [n["id"] for n in replayed(stack, "orphan")] == [created["id"]]


def api_down(server: Any) -> bool:
    try:
        requests.get(server.url + "/healthz", timeout=1)
    except requests.RequestException:
        return True
    return False


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"send_at": "tomorrow"}, "send_at", "ISO 8601"),
        ({"send_at": 1700000000}, "send_at", "ISO 8601"),
        ({"send_at": "2030-01-01T09:00:00"}, "send_at", "offset"),
        ({"send_at": "2999-01-01T09:00:00Z"}, "send_at", "a year ahead"),
        ({"expires_at": "2000-01-01T00:00:00Z"}, "expires_at", "later than now"),
        ({"send_at": "+3600", "expires_at": "+60"}, "expires_at", "than send_at"),
        ({"collapse_key": ""}, "collapse_key", "1-128"),
        ({"collapse_key": "k" * 129}, "collapse_key", "1-128"),
        ({"send_after": "x"}, "send_after", "unknown field"),
    ],
)
def test_validation_names_the_field(client, auth, fields, field, words):
    for name in ("send_at", "expires_at"):
        if isinstance(fields.get(name), str) and fields[name].startswith("+"):
            fields = {**fields, name: at(float(fields[name][1:]))}
    resp = client.post("/api/notifications", json={"user_id": "v", "message": "m", **fields}, headers=auth)
    assert resp.status_code == 422, resp.get_json()
    error = resp.get_json()["error"]
    assert error["field"] == field and words in error["message"]
