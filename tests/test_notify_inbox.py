"""static/notify.js's <notify-inbox> element in Chromium, on a page of another origin, both
transports: the unseen badge, the popover by keyboard, mark read, archive, load more,
actions as links, the empty and offline states. Waits on what the element shows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import requests

from app.store.serialization import iso
from tests.browser import make_page, page  # noqa: F401
from tests.test_cors import OtherOrigin

pytestmark = pytest.mark.browser

INBOX_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>an app with an inbox</title>
<style>notify-inbox {{ --notify-accent: rgb(1, 2, 3); }}</style>
<script src="{service}/static/notify.js"></script></head><body>
<notify-inbox url="{service}" token="{token}" transport="{transport}" limit="2"></notify-inbox>
</body></html>"""


@pytest.fixture
def site() -> Iterator[OtherOrigin]:
    other = OtherOrigin(INBOX_PAGE)
    yield other
    other.server.stop()


def shown(page: Any, selector: str) -> Any:  # noqa: F811
    """The element's open shadow DOM is what Playwright's CSS selectors pierce."""
    return page.locator(f"notify-inbox {selector}")


def counts(server: Any, user: str) -> dict[str, int]:
    resp = requests.get(
        server.url + "/api/me/counts", headers={"Authorization": f"Bearer {server.token(user)}"}, timeout=10
    )
    assert resp.status_code == 200
    return resp.json()


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_the_inbox_element_on_another_origin(page, live, site, transport, artifacts):  # noqa: F811
    server = live(ALLOWED_ORIGINS=site.origin)
    user = f"ivy-{transport}"
    oldest = server.notify(user, "the oldest")
    server.notify(user, "older")
    action = {"label": "Open the report", "url": "https://example.com/report/7"}
    resp = server.post(
        "/api/notifications",
        {"user_id": user, "title": "Report", "message": "ready", "priority": "high", "actions": [action]},
    )
    assert resp.status_code == 201
    site.fill = {"service": server.url, "token": server.token(user), "transport": transport}
    page.goto(site.origin + "/")
    badge = shown(page, ".badge")
    badge.wait_for()
    page.wait_for_function("document.querySelector('notify-inbox').getAttribute('status') === 'open'")
    assert badge.text_content() == "3"  # the counts of the whole inbox, not of the page shown

    live_one = server.notify(user, "arrived live")
    page.wait_for_function("() => document.querySelector('notify-inbox').items.length === 3")
    assert badge.text_content() == "4"
    assert shown(page, ".bell").get_attribute("aria-label") == "Notifications, 4 new"

    shown(page, ".bell").focus()
    page.keyboard.press("Enter")  # a button: the keyboard opens it
    assert shown(page, ".bell").get_attribute("aria-expanded") == "true"
    page.wait_for_function(
        "() => document.querySelector('notify-inbox').shadowRoot.querySelector('.badge').hidden"
    )
    assert counts(server, user)["unseen"] == 0
    messages = shown(page, "li .message").all_text_contents()
    assert messages == ["arrived live", "ready", "older"], "the newest page of 2, live ones on top"
    assert shown(page, "li.high .title").text_content() == "Report"
    link = shown(page, ".actions a")
    assert link.get_attribute("href") == action["url"] and link.get_attribute("rel") == "noopener noreferrer"
    assert "rgb(1, 2, 3)" in link.evaluate("a => getComputedStyle(a).color")

    shown(page, ".more").click()
    page.wait_for_function("() => document.querySelector('notify-inbox').items.length === 4")
    assert shown(page, "li .message").all_text_contents()[-1] == oldest["message"]
    assert shown(page, ".more").is_hidden()

    shown(page, f'li[data-id="{live_one["id"]}"] button[data-change="read"]').click()
    page.locator(f'notify-inbox li.read[data-id="{live_one["id"]}"]').wait_for()
    assert counts(server, user)["unread"] == 3
    page.screenshot(path=str(artifacts / f"notify-inbox-{transport}.png"))

    for left in range(3, -1, -1):  # each archive re-renders the list: always the first one
        shown(page, 'li button[data-change="archive"]').first.click()
        page.wait_for_function(f"() => document.querySelector('notify-inbox').items.length === {left}")
    shown(page, ".empty").wait_for()
    assert counts(server, user)["total"] == 0

    page.keyboard.press("Escape")
    assert (
        shown(page, ".panel").is_hidden() and shown(page, ".bell").get_attribute("aria-expanded") == "false"
    )

    page.allow_console_errors(r"net::ERR_", r"WebSocket connection to .* failed")  # the kill below
    server.kill()  # the service goes away: the element says so instead of going blank
    page.wait_for_function("document.querySelector('notify-inbox').getAttribute('status') === 'reconnecting'")
    shown(page, ".bell").click()
    assert "Offline" in shown(page, ".status").text_content()


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_the_inbox_updates_entries_in_place_and_replaces_collapsed_ones(page, live, site, transport):  # noqa: F811
    server = live(ALLOWED_ORIGINS=site.origin)
    user = f"upd-{transport}"
    progress = server.post(
        "/api/notifications", {"user_id": user, "message": "upload 10%", "collapse_key": "up"}
    )
    other = server.notify(user, "other")
    site.fill = {"service": server.url, "token": server.token(user), "transport": transport}
    page.goto(site.origin + "/")
    page.wait_for_function("document.querySelector('notify-inbox').getAttribute('status') === 'open'")
    page.evaluate(
        """() => { const el = document.querySelector('notify-inbox'); window.updates = [];
        const inner = el.client.opts.onUpdate;
        el.client.opts.onUpdate = (n, meta) => {
          window.updates.push([n.id, meta.replaces]); inner(n, meta); }; }"""
    )
    shown(page, ".bell").click()
    assert shown(page, "li .message").all_text_contents() == ["other", "upload 10%"]

    resp = server.call("PATCH", f"/api/notifications/{progress.json()['id']}", {"message": "upload 50%"})
    assert resp.status_code == 200
    page.wait_for_function("() => window.updates.length === 1")
    assert shown(page, "li .message").all_text_contents() == ["other", "upload 50%"], "in place"

    done = server.post(
        "/api/notifications", {"user_id": user, "message": "upload done", "collapse_key": "up"}
    )
    page.wait_for_function("() => window.updates.length === 2")
    assert page.evaluate("window.updates") == [
        [progress.json()["id"], None],
        [done.json()["id"], progress.json()["id"]],
    ]
    assert shown(page, "li .message").all_text_contents() == ["upload done", "other"]
    assert [e.get_attribute("data-id") for e in shown(page, "li").all()] == [done.json()["id"], other["id"]]

    expires = iso(datetime.now(timezone.utc) + timedelta(seconds=2))
    brief = server.post("/api/notifications", {"user_id": user, "message": "brief", "expires_at": expires})
    page.wait_for_function("() => document.querySelector('notify-inbox').items.length === 3")
    page.wait_for_function("() => document.querySelector('notify-inbox').items.length === 2", timeout=10000)
    assert brief.json()["id"] not in [e.get_attribute("data-id") for e in shown(page, "li").all()]


def test_the_preferences_panel_by_keyboard(page, live, site):  # noqa: F811
    server = live(ALLOWED_ORIGINS=site.origin)
    user = "pref-panel"
    resp = server.post("/api/notifications", {"user_id": user, "message": "20% off", "category": "promo"})
    assert resp.status_code == 201
    site.fill = {"service": server.url, "token": server.token(user), "transport": "sse"}
    page.goto(site.origin + "/")
    page.wait_for_function("document.querySelector('notify-inbox').getAttribute('status') === 'open'")
    shown(page, ".bell").focus()
    page.keyboard.press("Enter")
    shown(page, ".prefs-open").focus()
    page.keyboard.press("Enter")
    assert shown(page, ".prefs-open").get_attribute("aria-expanded") == "true"
    promo = shown(page, 'fieldset[data-category="promo"]')  # a category of the inbox, offered
    promo.wait_for()
    assert shown(page, "ul").is_hidden()
    assert shown(page, 'fieldset[data-category=""] legend').text_content() == "Any category"
    assert (
        page.evaluate("() => document.querySelector('notify-inbox').shadowRoot.activeElement.name") == "inbox"
    ), "the first toggle has the focus"

    def checked() -> list[str]:
        return [c for c in ("inbox", "live", "push") if promo.locator(f'input[name="{c}"]').is_checked()]

    assert checked() == ["inbox", "live", "push"]
    promo.locator('input[name="inbox"]').focus()
    page.keyboard.press("Space")
    assert checked() == [], "out of the inbox: not live nor pushed either"
    promo.locator('input[name="live"]').focus()
    page.keyboard.press("Space")
    assert checked() == ["inbox", "live"], "live comes with the inbox"
    page.keyboard.press("Space")
    assert checked() == ["inbox"], "muted: in the inbox alone"
    promo.locator('input[name="inbox"]').focus()
    page.keyboard.press("Space")
    assert checked() == []
    shown(page, 'input[name="quiet"]').focus()
    page.keyboard.press("Space")
    page.allow_console_errors(r"status of 422")  # the refused time zone below
    shown(page, 'input[name="timezone"]').fill("Mars/Olympus")
    shown(page, 'input[name="timezone"]').press("Enter")  # submits the form
    result = shown(page, ".prefs-result")
    result.wait_for()
    assert result.text_content() == "quiet_hours.timezone: unknown time zone 'Mars/Olympus'"
    assert result.get_attribute("role") == "status"

    shown(page, 'input[name="timezone"]').fill("Europe/Paris")
    shown(page, 'form.prefs button[type="submit"]').focus()
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.querySelector('notify-inbox').shadowRoot.querySelector('.prefs-result').textContent"
        " === 'Saved'"
    )
    stored = requests.get(
        f"{server.url}/api/users/{user}/preferences",
        headers={"Authorization": f"Bearer {server.stack.api_key}"},
        timeout=10,
    ).json()
    assert stored == {
        "default": ["inbox", "live", "push"],
        "categories": {"promo": []},
        "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Europe/Paris"},
    }

    shown(page, ".prefs-open").click()  # back to the list
    assert shown(page, "form.prefs").is_hidden() and shown(page, "ul").is_visible()
    server.post("/api/notifications", {"user_id": user, "message": "another sale", "category": "promo"})
    server.post("/api/notifications", {"user_id": user, "message": "your invoice", "category": "billing"})
    page.wait_for_function("() => document.querySelector('notify-inbox').items.length === 2")
    assert shown(page, "li .message").all_text_contents() == ["your invoice", "20% off"], "promo: not live"
    page.reload()  # the history as stored: the promo sent after the change is in no inbox
    page.wait_for_function("document.querySelector('notify-inbox').getAttribute('status') === 'open'")
    shown(page, ".bell").click()
    page.wait_for_function("() => document.querySelector('notify-inbox').items.length === 2")
    assert shown(page, "li .message").all_text_contents() == ["your invoice", "20% off"]
