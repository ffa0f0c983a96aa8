"""static/notify.js and static/notify-sw.js in Chromium: the client registers the service
worker the service serves, and a push event carrying what the app pushed (captured by the
test's push service and decrypted with the browser's keys) is shown as a notification
with its actions. A real PushManager subscription needs the browser vendor's push
service, which cannot be reached here, so the push is delivered over DevTools, and
``enablePush`` is shown storing a subscription that PushManager.subscribe hands it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from tests.browser import make_page  # noqa: F401
from tests.push_service import Browser, PushService, unb64url
from tests.support import wait_until

pytestmark = pytest.mark.browser


@pytest.fixture
def push_service() -> Iterator[PushService]:
    service = PushService()
    yield service
    service.stop()


def test_the_service_worker_shows_a_pushed_notification(make_page, live, push_service):  # noqa: F811
    server = live(PUSH_ENABLED="1", PUSH_ALLOW_LOCAL_ENDPOINTS="1")
    browser = Browser(push_service.origin + "/push/chromium")
    token = server.token("wes")
    resp = requests.post(
        server.url + "/api/me/push-subscriptions",
        json=browser.subscription,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert resp.status_code == 201
    actions = [
        {"label": "Open the report", "url": "https://example.com/report/7"},
        {"label": "Dismiss", "url": "https://example.com/dismiss"},
    ]
    note = server.post(
        "/api/notifications",
        {"user_id": "wes", "title": "Report", "message": "ready", "priority": "high", "actions": actions},
    ).json()
    wait_until(lambda: push_service.received)
    pushed = browser.decrypt(push_service.received[0])

    sw = requests.get(server.url + "/notify-sw.js", timeout=5)
    assert sw.status_code == 200 and "javascript" in sw.headers["Content-Type"]
    assert sw.headers["Service-Worker-Allowed"] == "/"

    page = make_page(permissions=["notifications"])
    page.goto(server.url + "/healthz")
    page.add_script_tag(url=server.url + "/static/notify.js")
    cdp = page.context.new_cdp_session(page.page)
    registrations: list[dict] = []
    cdp.on("ServiceWorker.workerRegistrationUpdated", lambda e: registrations.extend(e["registrations"]))
    cdp.send("ServiceWorker.enable")
    scope = page.evaluate(
        """async (token) => {
            const client = new Notify.Client({ url: '', token });
            const registration = await client.registerWorker();
            client.close();
            return registration.scope;
        }""",
        token,
    )
    assert scope == server.url + "/"
    wait_until(lambda: any(r["scopeURL"] == scope and not r["isDeleted"] for r in registrations))
    registration_id = next(r["registrationId"] for r in registrations if r["scopeURL"] == scope)
    cdp.send(
        "ServiceWorker.deliverPushMessage",
        {"origin": server.url, "registrationId": registration_id, "data": json.dumps(pushed)},
    )
    page.wait_for_function(
        "async () => (await (await navigator.serviceWorker.getRegistration())"
        ".getNotifications()).length === 1"
    )
    shown = page.evaluate(
        """async () => {
            const [n] = await (await navigator.serviceWorker.getRegistration()).getNotifications();
            return { title: n.title, body: n.body, tag: n.tag, actions: n.actions.map((a) => a.title),
                     requireInteraction: n.requireInteraction, data: n.data };
        }"""
    )
    assert shown["title"] == "Report" and shown["body"] == "ready" and shown["tag"] == note["id"]
    assert shown["actions"] == ["Open the report", "Dismiss"] and shown["requireInteraction"] is True
    assert shown["data"]["urls"] == [a["url"] for a in actions]
    assert shown["data"]["open"] == scope, "a click on the notification opens the app"


def test_enable_push_subscribes_with_the_service_key(make_page, live, push_service):  # noqa: F811
    """``enablePush`` up to the vendor's push service: PushManager.subscribe, which would call
    it, answers with the test's subscription; the rest is real, down to the push arriving."""
    server = live(PUSH_ENABLED="1", PUSH_ALLOW_LOCAL_ENDPOINTS="1")
    browser = Browser(push_service.origin + "/push/enabled")
    token = server.token("eve")
    page = make_page(permissions=["notifications"])
    page.goto(server.url + "/healthz")
    page.add_script_tag(url=server.url + "/static/notify.js")
    result = page.evaluate(
        """async ([token, subscription]) => {
            let asked = null;
            PushManager.prototype.getSubscription = async () => null;
            PushManager.prototype.subscribe = async (options) => {
                const key = Array.from(new Uint8Array(options.applicationServerKey));
                asked = { visible: options.userVisibleOnly, key };
                return { endpoint: subscription.endpoint, toJSON: () => subscription };
            };
            const client = new Notify.Client({ url: '', token });
            await client.enablePush();
            client.close();
            return asked;
        }""",
        [token, browser.subscription],
    )
    key = requests.get(
        server.url + "/api/me/push-key", headers={"Authorization": f"Bearer {token}"}, timeout=5
    ).json()["public_key"]
    assert result["visible"] is True and bytes(result["key"]) == unb64url(key)
    server.notify("eve", "pushed to the subscription enablePush stored")
    wait_until(lambda: push_service.received)
    assert (
        browser.decrypt(push_service.received[0])["message"] == "pushed to the subscription enablePush stored"
    )
