"""Users' preferences (app/preferences/): the API and its validation, documents stored by
earlier versions, and their effect at send time on live servers: a muted category stored
but neither pushed nor sent on open streams, and a category off everywhere (``[]``)
stored but in no inbox, count, replay or recent list either, on every path (single, bulk,
topic, scheduled, the relay); quiet hours holding Web Push back until they end, across a
restart; a change taking effect at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pymongo
import pytest
import requests

from app.dashboard.reach import waiting_query as reach_query
from app.preferences import store as prefs_store
from app.store.models import EITHER_READ, HISTORY_INDEX, MARKERS
from tests.push_service import PushService
from tests.support import SSEClient, wait_until, winning_stages
from tests.test_push import PUSH, metric, subscribe

MUTE_PROMO = {"categories": {"promo": ["muted"]}}


@pytest.fixture
def push_service() -> Iterator[PushService]:
    service = PushService()
    yield service
    service.stop()


def token(client: Any, auth: dict[str, str], user: str) -> dict[str, str]:
    resp = client.post("/api/tokens", json={"user_id": user}, headers=auth)
    return {"Authorization": f"Bearer {resp.get_json()['token']}"}


def test_defaults_round_trip_and_both_endpoints(client, auth):
    me = token(client, auth, "ada")
    defaults = {"default": ["inbox", "live", "push"], "categories": {}, "quiet_hours": None}
    assert client.get("/api/me/preferences", headers=me).get_json() == defaults
    body = {
        "default": ["live"],
        "categories": {
            "billing": ["push", "live"],
            "promo": ["muted"],
            "news": ["inbox"],
            "ads": [],
            "a.b $c": ["push"],
            "chat": ["live", "inbox"],
        },
        "quiet_hours": {"start": "22:00", "end": "07:30", "timezone": "Europe/Paris"},
    }
    resp = client.put("/api/me/preferences", json=body, headers=me)
    assert resp.status_code == 200
    categories = {
        "a.b $c": ["inbox", "push"],
        "ads": [],
        "billing": ["inbox", "live", "push"],
        "chat": ["inbox", "live"],
        "news": ["muted"],
        "promo": ["muted"],
    }
    expected = {**body, "default": ["inbox", "live"], "categories": categories}
    assert resp.get_json() == expected
    assert client.get("/api/me/preferences", headers=me).get_json() == expected
    assert client.get("/api/users/ada/preferences", headers=auth).get_json() == expected
    resp = client.put("/api/users/ada/preferences", json={}, headers=auth)
    assert resp.get_json() == defaults, "a PUT replaces everything: what it leaves out is the default"
    assert client.get("/api/me/preferences", headers=me).get_json() == defaults
    assert client.get("/api/me/preferences").status_code == 401
    assert client.get("/api/users/ada/preferences", headers=me).status_code == 401
    assert client.get("/api/users/bad%20id/preferences", headers=auth).status_code == 422


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"default": ["email"]}, "default"),
        ({"default": "live"}, "default"),
        ({"categories": {"promo": ["live", "muted"]}}, "categories.promo"),
        ({"categories": {"promo": ["inbox", "muted"]}}, "categories.promo"),
        ({"categories": {"promo": ["inbox", "inbox"]}}, "categories.promo"),
        ({"categories": {"promo": ["inbox", "live", "push", "muted"]}}, "categories.promo"),
        ({"default": ["Inbox"]}, "default"),
        ({"categories": {"promo": ["live", "live"]}}, "categories.promo"),
        ({"categories": {"promo": ["sms"]}}, "categories.promo"),
        ({"categories": {f"c{i}": ["live"] for i in range(101)}}, "categories"),
        ({"categories": {"x" * 65: ["live"]}}, "categories"),
        ({"categories": ["promo"]}, "categories"),
        ({"categories": None}, "categories"),
        ({"default": None}, "default"),
        ({"quiet_hours": {"start": "24:00", "end": "07:00", "timezone": "UTC"}}, "quiet_hours.start"),
        ({"quiet_hours": {"start": "22:00", "end": "7:00", "timezone": "UTC"}}, "quiet_hours.end"),
        ({"quiet_hours": {"start": "22:00", "end": "22:00", "timezone": "UTC"}}, "quiet_hours.end"),
        (
            {"quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Mars/Olympus"}},
            "quiet_hours.timezone",
        ),
        ({"quiet_hours": {"start": "22:00", "end": "07:00"}}, "quiet_hours.timezone"),
        ({"quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "UTC", "x": 1}}, "quiet_hours.x"),
        ({"quiet_hours": "nights"}, "quiet_hours"),
        ({"channels": ["live"]}, "channels"),
    ],
)
def test_bad_input_is_refused_naming_the_field(client, auth, body, field):
    resp = client.put("/api/users/bob/preferences", json=body, headers=auth)
    assert resp.status_code == 422, resp.get_data(as_text=True)
    assert resp.get_json()["error"]["field"] == field
    assert client.get("/api/users/bob/preferences", headers=auth).get_json()["categories"] == {}


def test_browsers_may_put_preferences_from_an_allowed_origin(make_app):
    client = make_app(ALLOWED_ORIGINS=("https://app.example.com",)).test_client()
    resp = client.options(
        "/api/me/preferences",
        headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "PUT"},
    )
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "PUT" in resp.headers["Access-Control-Allow-Methods"]


# -- at send time, on live servers ----------------------------------------------------------
def put(server: Any, user: str, body: dict[str, Any]) -> None:
    resp = requests.put(
        f"{server.url}/api/users/{user}/preferences",
        json=body,
        headers={"Authorization": f"Bearer {server.stack.api_key}"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text


def inbox(server: Any, user: str) -> list[str]:
    resp = requests.get(
        server.url + "/api/me/notifications",
        headers={"Authorization": f"Bearer {server.token(user)}"},
        timeout=10,
    )
    return sorted(n["message"] for n in resp.json()["notifications"])


def send(server: Any, path: str, users: list[str], message: str, **extra: Any) -> None:
    """``message`` to ``users`` by ``path``; the scheduled path sends it in ``extra["delay"]`` s."""
    content = {"message": message, **{k: v for k, v in extra.items() if k != "delay"}}
    if path == "topic":
        resp = server.post("/api/notifications", {"topic": "news", **content})
        assert resp.status_code == 202, resp.text
        return
    if path == "scheduled":
        at = datetime.now(timezone.utc) + timedelta(seconds=extra["delay"])
        content["send_at"] = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    bodies = (
        [{"user_ids": users, **content}] if path == "bulk" else [{"user_id": u, **content} for u in users]
    )
    for body in bodies:
        resp = server.post("/api/notifications", body)
        assert resp.status_code == 201, resp.text


@dataclass
class Sent:
    server: Any
    stream: SSEClient
    before: str | None  # the stream's last cursor before the sale
    pushed: list[str]  # the messages pushed when the invoice was


def follow_news(server: Any, users: list[str]) -> None:
    resp = requests.put(
        server.url + "/api/topics/news/subscribers",
        json={"user_ids": users},
        headers={"Authorization": f"Bearer {server.stack.api_key}"},
        timeout=10,
    )
    assert resp.status_code == 200


@contextmanager
def sale_and_invoice(live: Any, push_service: PushService, path: str, promo: list[str]) -> Iterator[Sent]:
    """Users "onl" (an open stream) and "off" (a push subscription) with ``promo`` as the
    channels of the promo category; a "sale" (promo) then an "invoice" (billing) sent to
    both by ``path``, the invoice streamed and pushed."""
    server = live(**PUSH)
    for user in ("onl", "off"):
        put(server, user, {"categories": {"promo": promo}})
    if path == "topic":
        follow_news(server, ["onl", "off"])
    browser = subscribe(server, "off", push_service)
    sse = SSEClient(server.url, server.token("onl"))
    try:
        server.notify("onl", "hello")
        sse.wait_count(1)
        before = sse.last_id()
        send(server, path, ["onl", "off"], "sale", category="promo", delay=0.5)
        send(server, path, ["onl", "off"], "invoice", category="billing", delay=1.0)
        sse.wait_count(2)
        wait_until(lambda: push_service.received)
        yield Sent(server, sse, before, [browser.decrypt(m)["message"] for m in push_service.received])
    finally:
        sse.close()


@pytest.mark.parametrize("path", ["single", "bulk", "topic", "scheduled"])
def test_a_muted_category_is_stored_but_not_pushed_nor_streamed(live, push_service, path):
    with sale_and_invoice(live, push_service, path, ["muted"]) as sent:
        server, sse, before = sent.server, sent.stream, sent.before
        wait_until(lambda: metric(server, "notify_push_skipped", "preferences") == 2)  # the sale, for each
        assert sent.pushed == ["invoice"] and len(push_service.received) == 1
        everything = ["hello", "invoice", "sale"]
        wait_until(lambda: inbox(server, "onl") == everything and inbox(server, "off") == ["invoice", "sale"])
        assert sse.messages() == ["hello", "invoice"], "the muted one is not sent on the open stream"
    replay = SSEClient(server.url, server.token("onl"), last_event_id=before)
    try:
        replay.wait_count(2)
        assert sorted(replay.messages()) == ["invoice", "sale"], (
            "a stream catching up replays it, like the inbox"
        )
        seqs = [int(e["id"]) for e in replay.notifications()]
        assert seqs == sorted(seqs)
    finally:
        replay.close()


def test_live_off_keeps_push_and_a_change_takes_effect_at_once(live, push_service):
    server = live(**PUSH)
    browser = subscribe(server, "cy", push_service)
    put(server, "cy", {"default": ["push"]})
    server.notify("cy", "pushed only")
    wait_until(lambda: len(push_service.received) == 1)
    put(server, "cy", {"default": ["live"]})
    sse = SSEClient(server.url, server.token("cy"))
    try:
        server.notify("cy", "streamed only")
        sse.wait_count(1)
        assert sse.messages() == ["streamed only"]
    finally:
        sse.close()
    wait_until(lambda: not server.online("cy"))
    server.notify("cy", "no push: push is off")
    wait_until(lambda: metric(server, "notify_push_skipped", "preferences") == 2)  # and "streamed only"
    put(server, "cy", {})
    server.notify("cy", "pushed again")
    wait_until(lambda: len(push_service.received) == 2)
    assert [browser.decrypt(m)["message"] for m in push_service.received] == ["pushed only", "pushed again"]


def quiet_window(zone: str) -> tuple[dict[str, str], datetime]:
    """Quiet hours in ``zone`` from a minute ago to the next minute at least 5 s away; its end (UTC)."""
    now = datetime.now(ZoneInfo(zone))
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    if (end - now).total_seconds() < 5:
        end += timedelta(minutes=1)
    start = now - timedelta(minutes=1)
    window = {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M"), "timezone": zone}
    return window, end.astimezone(timezone.utc)


def test_quiet_hours_hold_the_push_until_they_end_even_across_a_restart(live, push_service):
    server = live(**PUSH, PUSH_DEFERRED_POLL_SECONDS="0.2")
    browser = subscribe(server, "qu", push_service)
    window, end = quiet_window("Asia/Kathmandu")  # UTC+05:45
    put(server, "qu", {"quiet_hours": window})
    put(server, "qv", {"quiet_hours": window})
    sse = SSEClient(server.url, server.token("qv"))
    try:
        server.notify("qv", "live in quiet hours")
        sse.wait_count(1)  # live delivery goes on
    finally:
        sse.close()
    server.notify("qu", "at the end of quiet hours")
    wait_until(lambda: metric(server, "notify_push_deferred") == 1)
    assert push_service.received == [] and inbox(server, "qu") == ["at the end of quiet hours"]
    with pymongo.MongoClient(server.stack.mongo_uri, tz_aware=True) as mongo:
        (pending,) = mongo.get_default_database()["pending_pushes"].find()
    assert pending["user_id"] == "qu" and pending["due_at"] == end
    server.kill()
    after = live(**PUSH, PUSH_DEFERRED_POLL_SECONDS="0.2")
    wait_until(lambda: push_service.received, timeout=90)
    assert time.time() >= end.timestamp()
    assert browser.decrypt(push_service.received[0])["message"] == "at the end of quiet hours"
    with pymongo.MongoClient(after.stack.mongo_uri) as mongo:
        wait_until(lambda: mongo.get_default_database()["pending_pushes"].count_documents({}) == 0)


def test_an_update_of_a_muted_notification_is_not_streamed_either(live):
    server = live()
    put(server, "upd", MUTE_PROMO)
    sse = SSEClient(server.url, server.token("upd"))
    try:
        muted = server.post("/api/notifications", {"user_id": "upd", "message": "sale", "category": "promo"})
        resp = server.call("PATCH", f"/api/notifications/{muted.json()['id']}", {"message": "bigger sale"})
        assert resp.status_code == 200
        server.notify("upd", "marker")
        sse.wait_count(1)
        assert sse.messages() == ["marker"]
        assert [e["type"] for e in sse.events if e["type"] == "update"] == []
    finally:
        sse.close()


def test_a_refusal_states_the_rule(client, auth):
    resp = client.put("/api/users/bob/preferences", json={"default": "inbox"}, headers=auth)
    error = resp.get_json()["error"]
    assert resp.status_code == 422 and error["field"] == "default"
    assert '"live" and "push" imply "inbox"' in error["message"] and "[] (off everywhere" in error["message"]


def test_preferences_stored_before_the_inbox_was_a_channel_keep_their_meaning(app, client, auth):
    """Earlier versions stored lists of ``live`` / ``push`` or ``["muted"]``, all meaning in
    the inbox; what is stored now is written the same way (``[]`` the one new list), so an
    earlier version reading it back would not refuse it."""
    old = {
        "_id": "old-timer",
        "default": ["live"],
        "categories": [["promo", ["muted"]], ["alerts", ["push"]], ["chat", ["live", "push"]]],
        "quiet_hours": None,
    }
    with app.app_context():
        prefs_store.collection().insert_one(old)
    assert client.get("/api/users/old-timer/preferences", headers=auth).get_json() == {
        "default": ["inbox", "live"],
        "categories": {"alerts": ["inbox", "push"], "chat": ["inbox", "live", "push"], "promo": ["muted"]},
        "quiet_hours": None,
    }
    body = {"default": ["inbox", "live", "push"], "categories": {"ads": [], "promo": ["inbox"]}}
    assert client.put("/api/users/old-timer/preferences", json=body, headers=auth).status_code == 200
    with app.app_context():
        stored = prefs_store.collection().find_one({"_id": "old-timer"})
    assert stored["default"] == ["live", "push"]
    assert stored["categories"] == [["ads", []], ["promo", ["muted"]]]


def hidden(server: Any, message: str) -> list[dict[str, Any]]:
    """The stored notifications ``message`` that their users' preferences hid (sent, if scheduled)."""
    with pymongo.MongoClient(server.stack.mongo_uri) as mongo:
        query = {"message": message, "hidden": "preferences", "read": None, "due_at": None}
        return list(mongo.get_default_database()["notifications"].find(query))


def counts(server: Any, user: str) -> dict[str, Any]:
    return server.call("GET", f"/api/users/{user}/counts").json()


@pytest.mark.parametrize("path", ["single", "bulk", "topic", "scheduled"])
def test_a_category_off_everywhere_is_stored_but_in_no_inbox(live, push_service, path):
    """``[]``: stored (its sender sees why it went nowhere), but not in the inbox, the
    counts or a replay, not sent on open streams and not pushed."""
    with sale_and_invoice(live, push_service, path, []) as sent:
        server, sse, before = sent.server, sent.stream, sent.before
        wait_until(lambda: len(hidden(server, "sale")) == 2)
        assert sent.pushed == ["invoice"] and len(push_service.received) == 1
        assert inbox(server, "onl") == ["hello", "invoice"] and inbox(server, "off") == ["invoice"]
        assert sse.messages() == ["hello", "invoice"], "not sent on the open stream"
        assert {k: counts(server, "onl")[k] for k in ("unread", "total")} == {"unread": 2, "total": 2}
        assert counts(server, "off")["unread"] == 1
    replay = SSEClient(server.url, server.token("onl"), last_event_id=before)
    try:
        replay.wait_count(1)
        assert replay.messages() == ["invoice"], "not replayed (it would come first: its cursor is older)"
    finally:
        replay.close()
    for doc in hidden(server, "sale"):
        traced = server.call("GET", f"/api/notifications/{doc['_id']}").json()
        assert traced["hidden"] == "preferences" and traced["sent"] is True
        assert traced["delivery"]["published_at"] is None and traced["delivery"]["sent"] == []
    recent = server.call("GET", "/api/recent").json()["notifications"]
    assert "sale" not in [n["message"] for n in recent] and "invoice" in [n["message"] for n in recent]


def test_what_is_hidden_leaves_cached_pages_counts_and_state_changes_alone(live):
    server = live()
    put(server, "hc", {"categories": {"promo": []}})
    server.notify("hc", "kept")
    base = "/api/users/hc/notifications"
    assert server.call("GET", base).headers["X-Cache"] == "MISS"
    assert server.call("GET", base).headers["X-Cache"] == "HIT"
    sse = SSEClient(server.url, server.token("hc"))
    try:
        resp = server.post("/api/notifications", {"user_id": "hc", "message": "sale", "category": "promo"})
        assert resp.status_code == 201 and resp.json()["hidden"] == "preferences", "its sender is told"
        page = server.call("GET", base)
        assert page.headers["X-Cache"] == "HIT", "nothing in the inbox changed: the cached page stands"
        assert [n["message"] for n in page.json()["notifications"]] == ["kept"]
        patched = server.call("PATCH", f"/api/notifications/{resp.json()['id']}", {"message": "bigger sale"})
        assert patched.status_code == 200 and patched.json()["hidden"] == "preferences"
        read = server.call("POST", "/api/users/hc/read", {"all": True})
        assert read.json() == {"updated": 1}, "only what is in the inbox"
        assert server.call("DELETE", f"{base}/{resp.json()['id']}").status_code == 404
        server.notify("hc", "marker")
        sse.wait_for(lambda: "marker" in sse.messages())
        assert sse.messages() == ["marker"] and [e for e in sse.events if e["type"] == "update"] == []
    finally:
        sse.close()
    with pymongo.MongoClient(server.stack.mongo_uri) as mongo:
        coll = mongo.get_default_database()["notifications"]
        (sale,) = coll.find({"hidden": "preferences"})
        assert sale["read"] is None and sale["message"] == "bigger sale" and sale.get("read_at") is None
        for query in (  # the inbox's queries, named to the index as the service names them
            coll.find({"user_id": "hc", "read": EITHER_READ, "archived_at": None}).sort("seq", -1).limit(21),
            coll.find({"user_id": "hc", "read": False, "archived_at": None, "deleted_at": None}),
            coll.find(reach_query("hc")),
        ):
            plan = query.hint(HISTORY_INDEX).explain()["queryPlanner"]["winningPlan"]
            stages = winning_stages(plan)
            assert "IXSCAN" in stages and "COLLSCAN" not in stages, stages
        assert list(plan["filter"]) == ["due_at"], "the waiting range: read and seq are its bounds"


def test_a_hidden_batch_the_relay_publishes_stays_hidden(live):
    healthy = live(workers=1, PUBLISH_LEASE_SECONDS="1", RELAY_INTERVAL_SECONDS="0.2")
    crashing = live(workers=1, TEST_CRASH_AFTER_INSERT="1", PUBLISH_LEASE_SECONDS="1")
    put(healthy, "rly", {"default": []})
    sse = SSEClient(healthy.url, healthy.token("rly"))
    try:
        with pytest.raises(requests.RequestException):
            crashing.post("/api/notifications", {"user_id": "rly", "message": "orphan"})
        with pymongo.MongoClient(healthy.stack.mongo_uri) as mongo:
            coll = mongo.get_default_database()["notifications"]
            assert coll.count_documents({"message": "orphan", "hidden": "preferences"}) == 1
            wait_until(lambda: coll.count_documents(MARKERS) == 0)  # the relay took the batch
        put(healthy, "rly", {})
        healthy.notify("rly", "after")
        sse.wait_count(1)
        assert sse.messages() == ["after"] and inbox(healthy, "rly") == ["after"]
    finally:
        sse.close()


def test_the_cache_refreshes_entries_read_late_in_their_life_in_the_background(app, monkeypatch):
    """An entry read in the second half of its life is served at once and read again in
    the background: a change made through another worker shows within the TTL, and a
    user notified that often never waits for MongoDB; a read begun before a local change
    is not cached over it."""
    cache = prefs_store.PreferenceCache(ttl=1.0, timeout=5.0)
    coll = prefs_store.collection
    with app.app_context():
        assert cache.get("often").live("chat")
        coll().insert_one({"_id": "often", "default": ["push"], "categories": [], "quiet_hours": None})
        assert cache.get("often").live("chat"), "cached: the change is not read yet"
        assert cache._refresher is None, "early in its life: no refresh"
        expires = cache._entries["often"][0]
        wait_until(lambda: time.monotonic() > expires - 0.5, timeout=2)
        assert cache.get("often").live("chat"), "late in its life: still served from the cache"
        assert cache._refresher is not None
        cache._refresher.join(timeout=5)
        assert not cache.get("often").live("chat"), "the background read brought the change"
        assert cache._entries["often"][0] > expires, "and a fresh entry"

        real = prefs_store.collection

        def changed_meanwhile() -> Any:  # a change through this worker lands during the read
            cache.invalidate("often")
            return real()

        cache.invalidate("often")
        monkeypatch.setattr(prefs_store, "collection", changed_meanwhile)
        assert not cache.get("often").live("chat"), "what was read is used for this batch"
        assert "often" not in cache._entries, "but not cached over the change"
