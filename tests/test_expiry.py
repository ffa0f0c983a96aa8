"""``expires_at``: past it a notification leaves the inbox, the counts, replays and the
recent list, even where a page or count was cached before (the cache never outlives the
first expiry in the inbox)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import gevent

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
