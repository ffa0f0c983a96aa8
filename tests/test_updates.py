"""Notifications changed in place: ``PATCH /api/notifications/<id>`` (an ``update`` event
to every open client of the user, on every instance, in the user's cursor order; the inbox
entry replaced) and ``collapse_key`` (a new notification replaces the previous one)."""

from __future__ import annotations

from typing import Any

import gevent
import pytest
from gevent.event import Event

from app.store import notifications as service_module
from tests.support import SSEClient, WSClient
from tests.test_scheduling import api, inbox, schedule


def patch(server: Any, nid: str, body: Any) -> Any:
    return api(server, "PATCH", f"/api/notifications/{nid}", json=body)


def kinds(client: Any) -> list[tuple[str, int]]:
    """(event type, cursor) of each cursored event, in arrival order."""
    out = []
    for event in client.events:
        if event["type"] in ("notification", "state", "update"):
            seq = event["id"] if event["type"] == "notification" else (event.get("data") or event)["seq"]
            out.append((event["type"], int(seq)))
    return out


def test_patch_reaches_sse_and_websocket_clients_on_two_instances_in_cursor_order(live):
    a, b = live(workers=1), live(workers=1)
    token = a.token("upd")
    sse, ws = SSEClient(a.url, token), WSClient(b.url, token)
    try:
        first = a.notify("upd", "uploading 10%")
        second = b.notify("upd", "other")
        assert api(a, "GET", "/api/users/upd/notifications").headers["X-Cache"] == "MISS"
        assert api(a, "GET", "/api/users/upd/notifications").headers["X-Cache"] == "HIT"

        change = {"message": "uploading 90%", "priority": "high", "data": {"progress": 90}}
        resp = patch(b, first["id"], change)
        assert resp.status_code == 200, resp.text
        updated = resp.json()
        assert updated["message"] == "uploading 90%" and updated["priority"] == "high"
        assert updated["seq"] == first["seq"] and updated["updated_at"] >= first["created_at"]
        third = a.notify("upd", "after")

        for client in (sse, ws):
            client.wait_for(lambda c=client: len(kinds(c)) == 4)
            order = kinds(client)
            assert [k for k, _ in order] == ["notification", "notification", "update", "notification"]
            assert [s for _, s in order] == sorted(s for _, s in order), "one cursor order"
        sse_update = next(e for e in sse.events if e["type"] == "update")["data"]
        ws_update = next(e for e in ws.events if e["type"] == "update")
        for update in (sse_update, ws_update):
            assert update["id"] == first["id"] and update["notification"]["message"] == "uploading 90%"
            assert update["notification"]["data"] == {"progress": 90}

        page = api(a, "GET", "/api/users/upd/notifications")
        assert page.headers["X-Cache"] == "MISS", "the update invalidated the cached page"
        by_id = {n["id"]: n for n in page.json()["notifications"]}
        assert by_id[first["id"]]["message"] == "uploading 90%"
        assert [n["id"] for n in page.json()["notifications"]] == [third["id"], second["id"], first["id"]]

        resumed = SSEClient(a.url, token, last_event_id=str(second["seq"]))
        try:
            resumed.wait_for(lambda: len(kinds(resumed)) == 2)
            assert [k for k, _ in kinds(resumed)] == ["update", "notification"]
        finally:
            resumed.close()
    finally:
        sse.close()
        ws.close()


def test_patch_of_a_scheduled_notification_changes_what_is_sent(live):
    server = live(workers=1)
    sse = SSEClient(server.url, server.token("upd-s"))
    try:
        waiting = schedule(server, "upd-s", 1.5, "draft")
        assert patch(server, waiting["id"], {"message": "final"}).status_code == 200
        sse.wait_count(1)
        assert sse.messages() == ["final"]
        assert not [e for e in sse.events if e["type"] == "update"], "nobody had it yet: no update event"
    finally:
        sse.close()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body"),
        ({"user_id": "x"}, "user_id"),
        ({"message": ""}, "message"),
        ({"message": None}, "message"),
        ({"title": 3}, "title"),
        ({"priority": "urgent"}, "priority"),
        ({"data": []}, "data"),
        ({"actions": [{"label": "Open", "url": "javascript:alert(1)"}]}, "actions[0].url"),
    ],
)
def test_patch_is_validated_like_create(client, auth, body, field):
    created = client.post("/api/notifications", json={"user_id": "v", "message": "m"}, headers=auth)
    nid = created.get_json()["id"]
    resp = client.patch(f"/api/notifications/{nid}", json=body, headers=auth)
    assert resp.status_code == 422 and resp.get_json()["error"]["field"] == field


def test_patch_of_an_unknown_notification(client, auth):
    resp = client.patch("/api/notifications/0123456789abcdef01234567", json={"message": "x"}, headers=auth)
    assert resp.status_code == 404
    assert client.patch("/api/notifications/bad", json={"message": "x"}, headers=auth).status_code == 422
    unauthenticated = client.patch("/api/notifications/0123456789abcdef01234567", json={"message": "x"})
    assert unauthenticated.status_code == 401


def collapsing(server: Any, user: str, message: str, key: str) -> Any:
    return server.post("/api/notifications", {"user_id": user, "message": message, "collapse_key": key})


def test_collapse_key_replaces_the_previous_notification(live):
    server = live(workers=1)
    token = server.token("col")
    sse, ws = SSEClient(server.url, token), WSClient(server.url, token)
    try:
        other = collapsing(server, "col-2", "1", "msgs")
        first = collapsing(server, "col", "1 new", "msgs")
        keep = server.notify("col", "unrelated")
        second = collapsing(server, "col", "2 new", "msgs")
        assert second.status_code == 201 and second.json()["replaces"] == first.json()["id"]
        assert "replaces" not in first.json() and second.json()["collapse_key"] == "msgs"

        assert inbox(server, "col") == [second.json()["id"], keep["id"]]
        assert api(server, "GET", "/api/users/col/counts").json()["total"] == 2
        assert inbox(server, "col-2") == [other.json()["id"]], "another user's key is theirs"
        for client in (sse, ws):
            client.wait_for(lambda c=client: any(e["type"] == "state" for e in c.events))
            newest = client.notifications()[-1]["notification"]
            assert newest["id"] == second.json()["id"] and newest["replaces"] == first.json()["id"]
            state = next(e for e in client.events if e["type"] == "state")
            change = state.get("data") or state
            assert change["change"] == "delete" and change["ids"] == [first.json()["id"]]
            assert change["total"] == 2
    finally:
        sse.close()
        ws.close()


def test_collapse_key_on_a_scheduled_notification_replaces_when_sent(live):
    server = live(workers=1)
    first = collapsing(server, "col-s", "a", "k").json()
    later = schedule(server, "col-s", 1.0, "b", collapse_key="k")
    assert inbox(server, "col-s") == [first["id"]], "the old one stays until the new one is sent"
    sse = SSEClient(server.url, server.token("col-s"), last_event_id=str(first["seq"]))
    try:
        sse.wait_for(lambda: any(e["type"] == "state" for e in sse.events))
        assert sse.notifications()[-1]["notification"]["replaces"] == first["id"]
        assert inbox(server, "col-s") == [later["id"]]
    finally:
        sse.close()


def test_scheduled_send_and_update_event_on_standalone_and_cluster(live, redis_mode):
    server = live(workers=1, **redis_mode)
    sse = SSEClient(server.url, server.token("upd-c"))
    try:
        waiting = schedule(server, "upd-c", 1.0, "scheduled")
        sse.wait_count(1)
        assert patch(server, waiting["id"], {"title": "changed"}).status_code == 200
        sse.wait_for(
            lambda: (
                [e["type"] for e in sse.events if e["type"] in ("notification", "update")][-1:] == ["update"]
            )
        )
        update = next(e for e in sse.events if e["type"] == "update")["data"]
        assert update["notification"]["title"] == "changed" and int(update["seq"]) > int(
            sse.notifications()[0]["id"]
        )
    finally:
        sse.close()


def test_two_posts_racing_with_one_collapse_key_leave_only_the_newest(make_app, auth, monkeypatch):
    """Two notifications with one key stored at once, each looking up the previous ones
    before the other is stored (two workers): once both are stored only the newest in
    cursor order stays in the inbox."""
    app = make_app()
    client = app.test_client()
    body = {"user_id": "racer", "collapse_key": "progress"}

    def post(message: str) -> dict[str, Any]:
        resp = client.post("/api/notifications", json={**body, "message": message}, headers=auth)
        assert resp.status_code == 201, resp.get_json()
        return resp.get_json()

    first = post("10%")
    real, marked, both = service_module.mark_replaced, [], Event()

    def unaware_of_each_other(docs: list[dict[str, Any]]) -> Any:
        found = real(docs)
        marked.append(docs)
        if len(marked) == 2:
            both.set()
        both.wait(10)
        return found

    monkeypatch.setattr(service_module, "mark_replaced", unaware_of_each_other)
    racers = gevent.joinall([gevent.spawn(post, "50%"), gevent.spawn(post, "60%")], raise_error=True)
    monkeypatch.undo()
    sent = sorted((r.value for r in racers), key=lambda n: n["seq"])
    assert all(n["replaces"] == first["id"] for n in sent), "neither saw the other"
    page = client.get("/api/users/racer/notifications", headers=auth).get_json()["notifications"]
    assert [n["id"] for n in page] == [sent[-1]["id"]]
    assert client.get("/api/users/racer/counts", headers=auth).get_json()["total"] == 1
