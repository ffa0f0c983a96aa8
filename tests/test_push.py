"""Web Push end to end on live servers: what a push service receives (decrypted with the
browser's keys, the VAPID JWT checked), the TTL and urgency, 410 removing the
subscription, 5xx retried, the per-recipient limit, and no push for a user with a live
stream, on this instance or another."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
import requests

from tests.push_service import Browser, PushService, vapid_claims
from tests.support import SSEClient, wait_until

PUSH = {
    "PUSH_ENABLED": "1",
    "PUSH_ALLOW_LOCAL_ENDPOINTS": "1",
    "PUSH_VAPID_SUBJECT": "mailto:ops@example.com",
}


@pytest.fixture
def push_service() -> Iterator[PushService]:
    service = PushService()
    yield service
    service.stop()


def me(server: Any, user: str, method: str, path: str, body: Any = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {server.token(user)}"}
    return requests.request(method, server.url + "/api/me" + path, json=body, headers=headers, timeout=10)


def subscribe(server: Any, user: str, service: PushService, name: str = "sub") -> Browser:
    browser = Browser(f"{service.origin}/push/{name}")
    resp = me(server, user, "POST", "/push-subscriptions", browser.subscription)
    assert resp.status_code == 201, resp.text
    return browser


def metric(server: Any, name: str, reason: str | None = None) -> float:
    text = requests.get(server.url + "/metrics", timeout=5).text
    label = r"\{reason=\"" + reason + r"\"\}" if reason else ""
    match = re.search(rf"^{name}_total{label} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def stored(server: Any) -> list[dict[str, Any]]:
    with pymongo.MongoClient(server.stack.mongo_uri) as client:
        return list(client.get_default_database()["push_subscriptions"].find())


def test_an_offline_user_gets_the_notification_encrypted_and_signed(live, push_service):
    server = live(**PUSH)
    key = me(server, "pam", "GET", "/push-key").json()["public_key"]
    browser = subscribe(server, "pam", push_service)
    action = {"label": "Open the report", "url": "https://example.com/report/7"}
    note = server.post(
        "/api/notifications",
        {"user_id": "pam", "title": "Report", "message": "ready", "priority": "high", "actions": [action]},
    ).json()

    wait_until(lambda: push_service.received)
    message = push_service.received[0]
    assert message.path == "/push/sub"
    body = browser.decrypt(message)
    assert body["id"] == note["id"] and body["title"] == "Report" and body["message"] == "ready"
    assert body["priority"] == "high" and body["actions"] == [action]
    assert message.headers["ttl"] == "86400", (
        "pywebpush's default TTL of 0 would drop it for an offline browser"
    )
    assert message.headers["urgency"] == "high"
    claims = vapid_claims(message, key)
    assert claims["aud"] == push_service.origin and claims["sub"] == "mailto:ops@example.com"
    wait_until(lambda: metric(server, "notify_push_sent") == 1)


def test_gone_removes_the_subscription_and_5xx_is_retried(live, push_service):
    server = live(**PUSH, PUSH_RETRY_BASE_SECONDS="0.05")
    subscribe(server, "gil", push_service, "gone")
    push_service.statuses = [410]
    server.notify("gil", "first")
    wait_until(lambda: metric(server, "notify_push_subscriptions_removed", "gone") == 1)
    assert stored(server) == []
    server.notify("gil", "second: nobody to push to")

    browser = subscribe(server, "gil", push_service, "flaky")
    push_service.statuses = [503, 429]
    server.notify("gil", "third")
    wait_until(lambda: len(push_service.received) == 4)
    assert [m.path for m in push_service.received] == [
        "/push/gone",
        "/push/flaky",
        "/push/flaky",
        "/push/flaky",
    ]
    assert browser.decrypt(push_service.received[-1])["message"] == "third"
    wait_until(lambda: metric(server, "notify_push_sent") == 1)
    assert len(stored(server)) == 1


def test_gives_up_after_the_bounded_attempts_and_limits_each_recipient(live, push_service):
    server = live(**PUSH, PUSH_RETRY_BASE_SECONDS="0.01", PUSH_MAX_ATTEMPTS="3", PUSH_PER_USER_PER_MINUTE="2")
    subscribe(server, "max", push_service)
    push_service.statuses = [500, 500, 500]
    server.notify("max", "never accepted")
    wait_until(lambda: metric(server, "notify_push_failed", "gave_up") == 1)
    assert len(push_service.received) == 3
    server.notify("max", "second of the minute")
    wait_until(lambda: metric(server, "notify_push_sent") == 1)
    server.notify("max", "third of the minute: over the limit")
    wait_until(lambda: metric(server, "notify_push_skipped", "rate_limited") == 1)
    assert len(push_service.received) == 4
    assert len(stored(server)) == 1, "a push service that failed keeps the subscription"


@pytest.mark.parametrize("where", ["same instance", "other instance"])
def test_a_user_with_a_live_stream_gets_no_push(live, push_service, where):
    fast = {**PUSH, "PRESENCE_INTERVAL_SECONDS": "0.2"}
    streams = live(**fast)
    posts = streams if where == "same instance" else live(**fast)
    subscribe(posts, "lou", push_service)
    sse = SSEClient(streams.url, streams.token("lou"))
    try:
        assert sse.status == 200
        wait_until(
            lambda: requests.get(
                posts.url + "/api/users/lou/presence",
                headers={"Authorization": f"Bearer {posts.stack.api_key}"},
                timeout=5,
            ).json()["online"]
        )
        posts.notify("lou", "seen live")
        sse.wait_count(1)
        wait_until(lambda: metric(posts, "notify_push_skipped", "online") == 1)
        assert push_service.received == []
    finally:
        sse.close()
    wait_until(lambda: not posts.online("lou"))
    started = time.time()
    posts.notify("lou", "after the tab closed")
    wait_until(lambda: push_service.received)
    assert push_service.received[0].path == "/push/sub" and time.time() - started < 10


def test_unsubscribe_and_the_key_endpoint(live, push_service):
    server = live(**PUSH)
    browser = subscribe(server, "ula", push_service)
    again = me(server, "ula", "POST", "/push-subscriptions", browser.subscription)
    assert again.status_code == 201 and len(stored(server)) == 1, "the same endpoint is stored once"
    resp = me(server, "ula", "DELETE", "/push-subscriptions", {"endpoint": browser.endpoint})
    assert resp.json() == {"removed": True} and stored(server) == []
    assert me(server, "ula", "DELETE", "/push-subscriptions", {"endpoint": browser.endpoint}).json() == {
        "removed": False
    }
    off = live()
    resp = me(off, "ula", "GET", "/push-key")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "push_disabled"


def test_a_bulk_send_pushes_to_its_offline_subscribers_only(live, push_service):
    """One batch of 300 recipients: the one offline subscriber is pushed, the one online is
    skipped, and the 298 who never enabled push cost nothing of their own (their batch's
    subscriptions and presence are read once: ``PushSender.deliver_batch``)."""
    server = live(**{**PUSH, "PRESENCE_INTERVAL_SECONDS": "0.2"})
    users = [f"bulk{i:03d}" for i in range(300)]
    offline = subscribe(server, users[7], push_service, "offline")
    subscribe(server, users[250], push_service, "online")
    sse = SSEClient(server.url, server.token(users[250]))
    try:
        wait_until(lambda: server.online(users[250]))
        resp = server.post("/api/notifications", {"user_ids": users, "message": "to all"})
        assert resp.status_code == 201, resp.text
        wait_until(lambda: metric(server, "notify_push_skipped", "online") == 1)
        wait_until(lambda: len(push_service.received) == 1)
        assert push_service.received[0].path == "/push/offline"
        assert offline.decrypt(push_service.received[0])["message"] == "to all"
    finally:
        sse.close()
