"""``expires_at``: past it a notification leaves the inbox, the counts, replays and the
recent list, even where a page or count was cached before (the cache never outlives the
first expiry in the inbox)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import gevent
from pymongo import monitoring

from app.store.serialization import iso
from tests.support import SSEClient
from tests.test_scheduling import api, inbox, schedule


def test_expired_notification_leaves_inbox_counts_replay_and_recent(live):
    server = live(workers=1)
    keep = server.notify("exp", "keep")
    expires = datetime.now(timezone.utc) + timedelta(seconds=2)
    body = {"user_id": "exp", "message": "soon gone", "expires_at": iso(expires)}
    resp = server.post("/api/notifications", body)
    assert resp.status_code == 201 and resp.json()["expires_at"] == iso(expires)
    gone = resp.json()
    after = server.notify("exp", "after")

    assert inbox(server, "exp") == [after["id"], gone["id"], keep["id"]]
    page = api(server, "GET", "/api/users/exp/notifications")
    assert page.headers["X-Cache"] == "HIT", "cached before the expiry"
    assert api(server, "GET", "/api/users/exp/counts").json()["total"] == 3
    assert api(server, "GET", "/api/users/exp/counts").json()["total"] == 3  # from the cache

    while datetime.now(timezone.utc) <= expires:  # the clock passing the time, not a guess
        gevent.sleep(0.05)
    assert inbox(server, "exp") == [after["id"], keep["id"]], "a cached page never serves it past expiry"
    assert api(server, "GET", "/api/users/exp/counts").json() == {"unseen": 2, "unread": 2, "total": 2}
    recent = [n["id"] for n in api(server, "GET", "/api/recent").json()["notifications"]]
    assert gone["id"] not in recent and keep["id"] in recent

    token = server.token("exp")
    for cursor in ("0", str(keep["seq"])):  # from MongoDB and the Redis list, and from the list alone
        sse = SSEClient(server.url, token, last_event_id=cursor)
        try:
            sse.wait_for(lambda s=sse: after["id"] in [e["notification"]["id"] for e in s.notifications()])
            assert gone["id"] not in [e["notification"]["id"] for e in sse.notifications()]
        finally:
            sse.close()


def test_scheduled_with_expiry_is_sent_then_expires(live):
    server = live(workers=1)
    sse = SSEClient(server.url, server.token("sx"))
    try:
        expires = iso(datetime.now(timezone.utc) + timedelta(seconds=3))
        created = schedule(server, "sx", 1.0, expires_at=expires)
        sse.wait_count(1)
        assert inbox(server, "sx") == [created["id"]]
        deadline = datetime.fromisoformat(created["expires_at"])
        while datetime.now(timezone.utc) <= deadline:
            time.sleep(0.05)
        assert inbox(server, "sx") == []
    finally:
        sse.close()


class _ExpiryReads(monitoring.CommandListener):
    """The users whose notifications were read to find their first expiry."""

    def __init__(self) -> None:
        self.users: list[str] = []

    def started(self, event: Any) -> None:
        query = event.command.get("filter") or {}
        if event.command_name == "find" and "expires_at" in query:
            self.users.append(query.get("user_id"))

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


def test_only_users_with_an_expiry_pay_for_it_and_only_once_it_passed(make_app, auth):
    """Finding a user's first expiry reads every notification of theirs: a cache fill
    asks MongoDB only when the user's first expiry (kept in Redis) has passed."""
    reads = _ExpiryReads()
    monitoring.register(reads)  # for the clients made from now on
    client = make_app().test_client()

    def page(user: str) -> list[str]:
        resp = client.get(f"/api/users/{user}/notifications", headers=auth)
        assert resp.status_code == 200
        return [n["message"] for n in resp.get_json()["notifications"]]

    client.post("/api/notifications", json={"user_id": "plain", "message": "stays"}, headers=auth)
    assert page("plain") == ["stays"] and reads.users == []
    soon = datetime.now(timezone.utc) + timedelta(seconds=1)
    for message, expires in (("goes", soon), ("later", soon + timedelta(days=1))):
        body = {"user_id": "timed", "message": message, "expires_at": iso(expires)}
        assert client.post("/api/notifications", json=body, headers=auth).status_code == 201
    assert page("timed") == ["later", "goes"] and reads.users == []  # the mark is ahead
    while datetime.now(timezone.utc) <= soon:  # the clock passing the time
        time.sleep(0.05)
    assert page("timed") == ["later"]
    assert reads.users == ["timed"]  # once, for the next mark (a day ahead)
    assert page("timed") == ["later"] and reads.users == ["timed"]
