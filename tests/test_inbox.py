"""Inbox states (seen, read, unread, archived, deleted), counts, priority and actions:
every endpoint for services and subscribers, their validation, the cache, and the state
events that keep every open client of a user in step (two instances, both transports)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import SSEClient, WSClient


def send(client, auth, user: str, n: int = 1, **fields: Any) -> list[str]:
    ids = []
    for i in range(n):
        resp = client.post(
            "/api/notifications", json={"user_id": user, "message": f"m{i}", **fields}, headers=auth
        )
        assert resp.status_code == 201, resp.get_json()
        ids.append(resp.get_json()["id"])
    return ids


def me(client, auth, user: str) -> dict[str, str]:
    token = client.post("/api/tokens", json={"user_id": user}, headers=auth).get_json()["token"]
    return {"Authorization": f"Bearer {token}"}


def counts(client, headers, base: str) -> dict[str, int]:
    resp = client.get(f"{base}/counts", headers=headers)
    assert resp.status_code == 200
    return resp.get_json()


def listed(client, headers, base: str, query: str = "") -> list[str]:
    resp = client.get(f"{base}/notifications{query}", headers=headers)
    assert resp.status_code == 200, resp.get_json()
    return [n["id"] for n in resp.get_json()["notifications"]]


@pytest.mark.parametrize("who", ["service", "subscriber"])
def test_every_state_and_the_counts(client, auth, who):
    ids = send(client, auth, "inbox")
    ids += send(client, auth, "inbox", 3)
    headers, base = (auth, "/api/users/inbox") if who == "service" else (me(client, auth, "inbox"), "/api/me")
    newest_first = ids[::-1]
    assert counts(client, headers, base) == {"unseen": 4, "unread": 4, "total": 4}

    assert client.post(f"{base}/seen", json={"all": True}, headers=headers).get_json() == {"updated": 4}
    assert counts(client, headers, base) == {"unseen": 0, "unread": 4, "total": 4}
    assert client.post(f"{base}/read", json={"ids": ids[:2]}, headers=headers).get_json() == {"updated": 2}
    assert counts(client, headers, base) == {"unseen": 0, "unread": 2, "total": 4}
    assert listed(client, headers, base, "?state=read") == newest_first[2:]
    assert listed(client, headers, base, "?state=unread") == newest_first[:2]

    assert client.post(f"{base}/unread", json={"ids": [ids[0]]}, headers=headers).get_json() == {"updated": 1}
    page = client.get(f"{base}/notifications", headers=headers).get_json()["notifications"]
    first = next(n for n in page if n["id"] == ids[0])
    assert (first["read"], first["seen"]) == (False, True), "marked unread, still seen: no badge again"
    assert counts(client, headers, base) == {"unseen": 0, "unread": 3, "total": 4}

    assert client.post(f"{base}/archive", json={"ids": ids[:2]}, headers=headers).get_json() == {"updated": 2}
    assert counts(client, headers, base) == {"unseen": 0, "unread": 2, "total": 2}
    assert listed(client, headers, base) == newest_first[:2]
    assert listed(client, headers, base, "?state=archived") == newest_first[2:]
    assert client.post(f"{base}/unarchive", json={"ids": [ids[1]]}, headers=headers).get_json() == {
        "updated": 1
    }
    assert counts(client, headers, base) == {"unseen": 0, "unread": 2, "total": 3}

    resp = client.delete(f"{base}/notifications/{ids[3]}", headers=headers)
    assert resp.status_code == 200 and resp.get_json() == {"deleted": ids[3]}
    assert counts(client, headers, base) == {"unseen": 0, "unread": 1, "total": 2}
    assert ids[3] not in listed(client, headers, base) + listed(client, headers, base, "?state=archived")
    assert client.delete(f"{base}/notifications/{ids[3]}", headers=headers).status_code == 404
    assert client.post(f"{base}/read", json={"ids": [ids[3]]}, headers=headers).get_json() == {"updated": 0}
    assert client.get(f"{base}/unread-count", headers=headers).get_json()["unread"] == 1


def test_category_filter_and_new_notifications_are_unseen(client, auth):
    a = send(client, auth, "cat", category="billing")
    b = send(client, auth, "cat", category="ci")
    assert listed(client, auth, "/api/users/cat", "?category=billing") == a
    assert listed(client, auth, "/api/users/cat", "?category=ci&state=unread") == b
    client.post("/api/users/cat/seen", json={"all": True}, headers=auth)
    send(client, auth, "cat")
    assert counts(client, auth, "/api/users/cat") == {"unseen": 1, "unread": 3, "total": 3}


def test_a_user_changes_only_their_own(client, auth):
    (theirs,) = send(client, auth, "owner")
    mine = me(client, auth, "intruder")
    for change in ("seen", "read", "archive"):
        assert client.post(f"/api/me/{change}", json={"ids": [theirs]}, headers=mine).get_json() == {
            "updated": 0
        }
    assert client.delete(f"/api/me/notifications/{theirs}", headers=mine).status_code == 404
    assert counts(client, auth, "/api/users/owner") == {"unseen": 1, "unread": 1, "total": 1}


def test_every_state_change_invalidates_the_cached_pages_and_counts(client, auth):
    ids = send(client, auth, "cached", 2)
    base = "/api/users/cached"
    steps = [
        ("seen", {"all": True}, lambda n: n["seen"]),
        ("read", {"ids": ids[:1]}, lambda n: n["read"]),
        ("unread", {"ids": ids[:1]}, lambda n: not n["read"]),
        ("archive", {"ids": ids[:1]}, lambda n: n["archived"]),
        ("unarchive", {"ids": ids[:1]}, lambda n: not n["archived"]),
    ]
    for change, body, check in steps:
        for query in ("", "?state=archived"):
            client.get(f"{base}/notifications{query}", headers=auth)
            assert client.get(f"{base}/notifications{query}", headers=auth).headers["X-Cache"] == "HIT"
        counts(client, auth, base)
        assert client.post(f"{base}/{change}", json=body, headers=auth).get_json()["updated"] >= 1
        everything = client.get(f"{base}/notifications", headers=auth)
        archived = client.get(f"{base}/notifications?state=archived", headers=auth)
        assert everything.headers["X-Cache"] == archived.headers["X-Cache"] == "MISS", change
        page = everything.get_json()["notifications"] + archived.get_json()["notifications"]
        assert check(next(n for n in page if n["id"] == ids[0])), change
    before = counts(client, auth, base)
    client.delete(f"{base}/notifications/{ids[1]}", headers=auth)
    assert counts(client, auth, base)["total"] == before["total"] - 1
    assert client.get(f"{base}/notifications", headers=auth).headers["X-Cache"] == "MISS"


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("seen", {}, "ids"),
        ("read", {"ids": [], "all": True}, "ids"),
        ("unread", {"ids": "x"}, "ids"),
        ("archive", {"ids": [1]}, "ids"),
        ("unarchive", {"ids": ["nope"]}, "ids"),
        ("archive", {"ids": ["a"] * 1001}, "ids"),
        ("seen", {"all": False}, "ids"),
    ],
)
def test_state_change_bad_input(client, auth, path, body, field):
    resp = client.post(f"/api/users/u/{path}", json=body, headers=auth)
    assert resp.status_code == 422 and resp.get_json()["error"]["field"] == field


@pytest.mark.parametrize(
    "query, field",
    [("state=new", "state"), ("state=read&unread=maybe", "unread"), ("category=" + "c" * 65, "category")],
)
def test_history_filters_bad_input(client, auth, query, field):
    resp = client.get(f"/api/me/notifications?{query}", headers=me(client, auth, "q"))
    assert resp.status_code == 422 and resp.get_json()["error"]["field"] == field


def test_delete_bad_id_and_auth(client, auth):
    assert (
        client.delete("/api/users/u/notifications/nope", headers=auth).get_json()["error"]["field"] == "ids"
    )
    assert client.delete("/api/me/notifications/6650f0c2a1b2c3d4e5f60718").status_code == 401
    assert client.get("/api/me/counts").status_code == 401
    assert client.get("/api/users/u/counts").status_code == 401


def test_priority_and_actions_are_stored_and_returned(client, auth):
    actions = [
        {"label": "Open", "url": "https://app.example/runs/42"},
        {"label": "Logs", "url": "/runs/42/log"},
    ]
    body = {"user_id": "pa", "message": "m", "priority": "high", "actions": actions}
    created = client.post("/api/notifications", json=body, headers=auth).get_json()
    assert (created["priority"], created["actions"]) == ("high", actions)
    (page,) = client.get("/api/users/pa/notifications", headers=auth).get_json()["notifications"]
    assert (page["priority"], page["actions"]) == ("high", actions)
    bulk = {"user_ids": ["pa1", "pa2"], "message": "m", "priority": "low"}
    assert [
        n["priority"]
        for n in client.post("/api/notifications", json=bulk, headers=auth).get_json()["notifications"]
    ] == ["low", "low"]


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"priority": "urgent"}, "priority"),
        ({"priority": 1}, "priority"),
        ({"actions": {}}, "actions"),
        ({"actions": [{"label": "a", "url": "/a"}] * 4}, "actions"),
        ({"actions": ["x"]}, "actions[0]"),
        ({"actions": [{"label": "a", "url": "/a", "style": "x"}]}, "actions[0].style"),
        ({"actions": [{"url": "/a"}]}, "actions[0].label"),
        ({"actions": [{"label": "", "url": "/a"}]}, "actions[0].label"),
        ({"actions": [{"label": "a" * 65, "url": "/a"}]}, "actions[0].label"),
        ({"actions": [{"label": "a"}]}, "actions[0].url"),
        ({"actions": [{"label": "a", "url": "javascript:alert(1)"}]}, "actions[0].url"),
        ({"actions": [{"label": "a", "url": "JavaScript:alert(1)"}]}, "actions[0].url"),
        ({"actions": [{"label": "a", "url": "java\nscript:alert(1)"}]}, "actions[0].url"),
        ({"actions": [{"label": "a", "url": "data:text/html,x"}]}, "actions[0].url"),
        ({"actions": [{"label": "a", "url": "//evil.example/x"}]}, "actions[0].url"),
        ({"actions": [{"label": "a", "url": "/\\evil.example"}]}, "actions[0].url"),
        ({"actions": [{"label": "a", "url": "https://"}]}, "actions[0].url"),
        ({"actions": [{"label": "a", "url": "ftp://x.example/f"}]}, "actions[0].url"),
        ({"actions": [{"label": "a", "url": "/ok"}, {"label": "b", "url": "mailto:a@b"}]}, "actions[1].url"),
    ],
)
def test_priority_and_actions_validation_names_the_field(client, auth, fields, field):
    resp = client.post("/api/notifications", json={"user_id": "v", "message": "m", **fields}, headers=auth)
    assert resp.status_code == 422, resp.get_json()
    assert resp.get_json()["error"]["field"] == field
    assert client.get("/api/users/v/counts", headers=auth).get_json()["total"] == 0


def _changes(client: Any) -> list[dict[str, Any]]:
    out = []
    for e in client.events:
        if e["type"] == "state":
            out.append(e.get("data", e))
    return out


def test_states_sync_across_instances_and_transports(live):
    """Two tabs and a phone: SSE on one instance, WebSocket on another; every change made
    anywhere reaches both, in one cursor order with the notifications, counts included."""
    one, two = live(), live()
    token = one.token("sync")
    sse, ws = SSEClient(one.url, token), WSClient(two.url, token)
    try:
        created = [one.notify("sync", f"m{i}") for i in range(3)]
        sse.wait_count(3)
        ws.wait_count(3)
        ws.send({"type": "seen", "all": True})  # the phone opened its inbox
        for client in (sse, ws):
            client.wait_for(lambda c=client: len(_changes(c)) >= 1)
        assert (
            one.post("/api/me/read", {"ids": [created[0]["id"]]}, Authorization=f"Bearer {token}").status_code
            == 200
        )
        assert (
            two.post(
                "/api/me/archive", {"ids": [created[1]["id"]]}, Authorization=f"Bearer {token}"
            ).status_code
            == 200
        )
        later = one.notify("sync", "after the changes")
        ws.send({"type": "unread", "ids": [created[0]["id"]]})
        ws.send({"type": "delete", "ids": [created[2]["id"]]})
        for client in (sse, ws):
            client.wait_for(lambda c=client: len(_changes(c)) >= 5)
        expected = ["seen", "read", "archive", "unread", "delete"]
        for client in (sse, ws):
            changes = _changes(client)
            assert [c["change"] for c in changes] == expected
            assert {k: changes[-1][k] for k in ("unseen", "unread", "total")} == {
                "unseen": 1,
                "unread": 2,
                "total": 2,
            }
            # One order: the notification published between the changes keeps its place.
            kinds = [
                e["type"] if e["type"] == "state" else e.get("notification", e.get("data", {})).get("id")
                for e in client.events
            ]
            assert kinds.index(later["id"]) == kinds.index("state") + 3
        assert sse.events[-1]["id"] is not None, "state events carry the stream cursor (Last-Event-ID)"
        seen_cursor = next(e["id"] for e in sse.events if e["type"] == "state")
        resumed = SSEClient(two.url, token, last_event_id=seen_cursor)
        try:
            resumed.wait_for(lambda: len(_changes(resumed)) >= 4)
            assert [c["change"] for c in _changes(resumed)] == expected[1:]
        finally:
            resumed.close()
    finally:
        sse.close()
        ws.close()


def test_unread_narrows_any_state(client, auth):
    ids = send(client, auth, "narrow", 3)
    client.post("/api/users/narrow/archive", json={"ids": ids[:2]}, headers=auth)
    client.post("/api/users/narrow/read", json={"ids": [ids[0]]}, headers=auth)
    assert listed(client, auth, "/api/users/narrow", "?state=archived&unread=true") == [ids[1]]
    assert listed(client, auth, "/api/users/narrow", "?unread=true") == [ids[2]]
    assert listed(client, auth, "/api/users/narrow", "?state=read&unread=true") == []
