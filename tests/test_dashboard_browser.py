"""The dashboard in headless Chromium against real gunicorn (2 workers), CSP enforced."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser import BrowserPage, make_page  # noqa: F401
from tests.support import SSEClient

PASSWORD = "browser test password"
XSS = "<script>alert(1)</script>"


def sign_in(page: BrowserPage, url: str) -> None:
    page.goto(url)
    expect(page.page).to_have_url(re.compile(r"/dashboard/login\?next="))
    page.fill("#username", "admin")
    page.fill("#password", PASSWORD)
    page.click("form button[type=submit]")


@pytest.mark.browser
def test_dashboard_in_a_browser(live: Callable[..., Any], make_page: Callable[..., BrowserPage]) -> None:  # noqa: F811
    # `live` first: pages close (and drop their keep-alive connections) before gunicorn stops.
    server = live(
        workers=2,
        ADMIN_USERNAME="admin",
        ADMIN_PASSWORD=PASSWORD,
        PRESENCE_INTERVAL_SECONDS="0.5",
        DASHBOARD_TICK_SECONDS="0.5",
    )
    server.notify("alice", "welcome aboard")
    page = make_page(bypass_csp=False)  # our Content-Security-Policy applies, as in production
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    # Overview: sign in, live recent list.
    sign_in(page, server.url + "/dashboard")
    expect(page.page).to_have_url(server.url + "/dashboard")
    expect(page.locator("#live-state")).to_have_attribute("data-state", "connected")
    server.notify("bob", "overview live")
    expect(page.locator("#recent-list .notif-message").first).to_have_text("overview live", timeout=1000)
    expect(page.locator("#stat-minute")).to_have_text("2")
    page.save_screenshot("dashboard-overview")
    page.set_viewport_size({"width": 390, "height": 844})
    page.save_screenshot("dashboard-overview-phone")
    page.set_viewport_size({"width": 1100, "height": 800})

    # User page: history from the cache, then a notification POSTed through the API arrives live.
    page.fill("#q", "alice")
    page.press("#q", "Enter")
    expect(page.page).to_have_url(server.url + "/dashboard/users/alice")
    expect(page.locator("#history .notif-message").first).to_have_text("welcome aboard")
    expect(page.locator("#cache-status")).to_have_attribute("data-state", "cached")
    expect(page.locator("#live-state")).to_have_attribute("data-state", "connected")
    expect(page.locator("#presence")).to_have_text("offline")  # the staff viewer does not count
    server.notify("alice", "pushed live")
    posted = time.monotonic()
    expect(page.locator("#live-feed .notif-message").first).to_have_text("pushed live", timeout=1000)
    expect(page.locator("#cache-status")).to_have_attribute("data-state", "fresh", timeout=1000)
    elapsed = time.monotonic() - posted
    print(f"POST -> visible on the user page: {elapsed * 1000:.0f} ms")
    assert elapsed < 1.0
    expect(page.locator("#unread-count")).to_have_text("2")

    # The user connects: online across workers, from the presence snapshots in Redis.
    client = SSEClient(server.url, server.token("alice"))
    try:
        expect(page.locator("#presence")).to_have_text("online · 1 connection", timeout=5000)
    finally:
        client.close()

    # The test form (CSRF-protected fetch); the XSS message shows as text, live and in history.
    page.fill("#test-message", XSS)
    page.click("#test-form button[type=submit]")
    page.click("#test-confirm-send")
    expect(page.locator("#test-result")).to_have_text("Sent.")
    expect(page.locator("#live-feed .notif-message").first).to_have_text(XSS, timeout=1000)
    assert page.locator("#live-feed script").count() == 0
    page.locator("#live-feed .mark-read").first.click()
    expect(page.locator("#unread-count")).to_have_text("2")
    page.save_screenshot("dashboard-user")
    page.reload()
    expect(page.locator("#history .notif-message").first).to_have_text(XSS)
    assert page.locator("#history script").count() == 0
    page.set_viewport_size({"width": 390, "height": 844})
    page.save_screenshot("dashboard-user-phone")
    assert dialogs == []

    # Signing out locks the pages and the JSON/stream endpoints again.
    page.click("#logout")
    expect(page.page).to_have_url(server.url + "/dashboard/login")
    page.goto(server.url + "/dashboard/users/alice")
    expect(page.page).to_have_url(re.compile(r"/dashboard/login\?next=/dashboard/users/alice"))
    assert page.request.get(server.url + "/dashboard/api/users/alice/stream").status == 401
