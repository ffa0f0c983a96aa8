"""Push subscriptions as the API takes them: the endpoint's SSRF rules (https, public
addresses only, when stored and again when sent, on the connected socket too), key
sizes, unknown fields; each refusal a 422 naming the field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from app.push import subscriptions
from app.push.endpoints import EndpointRefused
from app.push.transport import push_session
from tests.push_service import Browser, PushService
from tests.support import wait_until


@pytest.fixture
def push_service() -> Iterator[PushService]:
    service = PushService()
    yield service
    service.stop()


@pytest.fixture
def push_app(make_app):
    return make_app(PUSH_ENABLED=1)


def token(client: Any, auth: dict[str, str], user: str) -> dict[str, str]:
    resp = client.post("/api/tokens", json={"user_id": user}, headers=auth)
    return {"Authorization": f"Bearer {resp.get_json()['token']}"}


def subscribe(client: Any, headers: dict[str, str], body: Any) -> Any:
    return client.post("/api/me/push-subscriptions", json=body, headers=headers)


@pytest.mark.parametrize(
    "endpoint, why",
    [
        ("http://8.8.8.8/push", "https://"),
        ("https://127.0.0.1/push", "non-public"),
        ("https://198.51.100.7/push", "non-public"),  # documentation range: not global
        ("https://localhost:8443/push", "non-public"),
        ("https://10.1.2.3/push", "non-public"),
        ("https://192.168.1.1/push", "non-public"),
        ("https://169.254.169.254/latest/meta-data", "non-public"),
        ("https://[::1]/push", "non-public"),
        ("https://[fe80::1]/push", "non-public"),
        ("https://[::ffff:10.0.0.1]/push", "non-public"),
        ("https://0.0.0.0/push", "non-public"),
        ("https://224.0.0.1/push", "non-public"),
        ("https://user:pw@8.8.8.8/push", "user or password"),
        ("https://8.8.8.8/" + "a" * 2100, "2048"),
        ("ftp://8.8.8.8/push", "https://"),
        ("https://[nonsense/push", "not a URL"),
    ],
)
def test_endpoints_that_could_reach_inside_are_refused(push_app, auth, endpoint, why):
    client = push_app.test_client()
    body = Browser(endpoint).subscription
    resp = subscribe(client, token(client, auth, "sam"), body)
    assert resp.status_code == 422, resp.get_json()
    error = resp.get_json()["error"]
    assert error["field"] == "endpoint" and why in error["message"], error


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda b: b["keys"].update(p256dh=b["keys"]["p256dh"][:-4]), "keys.p256dh"),
        (lambda b: b["keys"].update(p256dh="A" * 87), "keys.p256dh"),  # 65 bytes, not a curve point
        (lambda b: b["keys"].update(auth="not base64!"), "keys.auth"),
        (lambda b: b["keys"].update(auth=b["keys"]["auth"] + "AAAA"), "keys.auth"),
        (lambda b: b["keys"].pop("auth"), "keys.auth"),
        (lambda b: b["keys"].update(extra="x"), "keys.extra"),
        (lambda b: b.pop("keys"), "keys"),
        (lambda b: b.update(endpoint=None), "endpoint"),
        (lambda b: b.update(expirationTime="soon"), "expirationTime"),
        (lambda b: b.update(topic="x"), "topic"),
    ],
)
def test_bad_subscriptions_name_the_field(push_app, auth, change, field):
    client = push_app.test_client()
    body = Browser("https://8.8.8.8/push/x").subscription
    change(body)
    resp = subscribe(client, token(client, auth, "sam"), body)
    assert resp.status_code == 422 and resp.get_json()["error"]["field"] == field, resp.get_json()


def test_a_public_endpoint_is_stored_and_the_newest_are_kept(make_app, auth):
    app = make_app(PUSH_ENABLED=1, PUSH_MAX_SUBSCRIPTIONS_PER_USER=2)
    client = app.test_client()
    headers = token(client, auth, "sam")
    for n in range(3):
        resp = subscribe(client, headers, Browser(f"https://8.8.8.8/push/{n}").subscription)
        assert resp.status_code == 201, resp.get_json()
    with app.app_context():
        kept = sorted(s.endpoint for s in subscriptions.for_user("sam", 10))
        found = subscriptions.for_users(["sam", "nobody"], 1)
        newest = {u: [s.endpoint for s in subs] for u, subs in found.items()}
    assert kept == ["https://8.8.8.8/push/1", "https://8.8.8.8/push/2"]
    assert newest == {"sam": ["https://8.8.8.8/push/2"]}, "the newest per user; none for who has none"
    assert client.post("/api/me/push-subscriptions", json={}).status_code == 401


def test_a_stored_endpoint_that_now_points_inside_is_removed_unsent(push_app, auth, push_service):
    """As if DNS changed after the subscription was checked: the send-time check refuses it."""
    client = push_app.test_client()
    browser = Browser(push_service.origin + "/push/inside")
    with push_app.app_context():
        subscriptions.save(
            subscriptions.Subscription(
                subscriptions.endpoint_id(browser.endpoint),
                "ria",
                browser.endpoint,
                browser.subscription["keys"]["p256dh"],
                browser.subscription["keys"]["auth"],
            ),
            keep=10,
        )
    resp = client.post("/api/notifications", json={"user_id": "ria", "message": "hi"}, headers=auth)
    assert resp.status_code == 201
    with push_app.app_context():
        wait_until(lambda: subscriptions.count("ria") == 0)
    assert push_service.received == []


def test_the_push_session_refuses_a_socket_connected_inside(push_service):
    """The last line against DNS rebinding: the connected peer's address is checked."""
    with pytest.raises(EndpointRefused, match="non-public"):
        push_session(allow_local=False, pool_size=1).post(push_service.origin + "/push", data=b"x", timeout=5)
    assert push_service.received == []
    resp = push_session(allow_local=True, pool_size=1).post(
        push_service.origin + "/push", data=b"x", timeout=5
    )
    assert resp.status_code == 201 and len(push_service.received) == 1


def test_redirects_are_not_followed(push_service):
    push_service.statuses = [307]
    resp = push_session(allow_local=True, pool_size=1).post(
        push_service.origin + "/push", data=b"x", timeout=5
    )
    assert resp.status_code == 307 and len(push_service.received) == 1
    assert isinstance(resp, requests.Response)


def test_a_large_notification_is_shortened_to_fit_a_push():
    from datetime import datetime, timezone

    from app.push.sender import MAX_PAYLOAD_BYTES, payload_of

    action = {"label": "L" * 64, "url": "https://example.com/" + "p" * 2000}
    doc = {
        "_id": "6650f0c2a1b2c3d4e5f60718", "user_id": "u", "title": "T", "message": "é\"" * 2000,
        "data": {"blob": "x" * 8000}, "actions": [action] * 3, "created_at": datetime.now(timezone.utc),
    }  # fmt: skip
    raw = payload_of(doc)
    body = json.loads(raw)
    assert len(raw) <= MAX_PAYLOAD_BYTES and body["truncated"] is True and body["data"] == {}
    assert body["message"] == "" and 1 <= len(body["actions"]) < 3
    small = json.loads(payload_of({**doc, "message": "hi", "data": {"url": "/x"}, "actions": []}))
    assert small == {**small, "message": "hi", "data": {"url": "/x"}} and "truncated" not in small
