"""The console's presence detail, disconnect, test-send confirmation, audit log and API
keys in headless Chromium against two real instances, CSP enforced."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser import BrowserPage, make_page  # noqa: F401
from tests.support import SSEClient, WSClient

PASSWORD = "console browser password"


@pytest.mark.browser
def test_console_in_a_browser(live: Callable[..., Any], make_page: Callable[..., BrowserPage]) -> None:  # noqa: F811
    fast = {"PRESENCE_INTERVAL_SECONDS": "0.3", "DASHBOARD_TICK_SECONDS": "0.3"}
    one = live(workers=2, INSTANCE_NAME="eu-1", ADMIN_USERNAME="admin", ADMIN_PASSWORD=PASSWORD, **fast)
    two = live(INSTANCE_NAME="eu-2", **fast)
    sse = SSEClient(two.url, two.token("gil"))
    ws: WSClient | None = None
    page = make_page(bypass_csp=False)
    try:
        page.goto(one.url + "/dashboard/users/gil")
        page.fill("#username", "admin")
        page.fill("#password", PASSWORD)
        page.click("form button[type=submit]")
        expect(page.page).to_have_url(one.url + "/dashboard/users/gil")
        rows = page.locator("#connection-list tbody tr")
        expect(rows).to_have_count(1, timeout=5000)  # the page reloads the card as the count changes
        expect(rows.first).to_contain_text("SSE")
        expect(rows.first).to_contain_text("eu-2")

        # A second connection, on the other instance, appears without a reload.
        ws = WSClient(one.url, one.token("gil"))
        expect(rows).to_have_count(2, timeout=5000)
        expect(page.locator("#presence")).to_have_text("online · 2 connections")
        note = one.notify("gil", "are you there?")
        ws.wait_count(1)
        ws.send({"type": "ack", "ids": [note["id"]]})
        ws_row = page.locator("#connection-list tr", has_text="WebSocket")
        expect(ws_row).to_contain_text("eu-1")
        page.wait_for_timeout(700)  # the receipt reaches presence with the next snapshot
        page.reload()
        expect(ws_row.locator("td").nth(3)).not_to_have_text("none yet", timeout=5000)
        page.save_screenshot("console-connections")

        # Disconnect the SSE stream held by the other instance.
        page.locator("#connection-list tr", has_text="SSE").get_by_role("button", name="Disconnect").click()
        expect(page.locator(".flash-info")).to_contain_text(
            re.compile(r"Connection sse~eu-2~\d+~\d+ closed\.")
        )
        assert sse.closed.wait(5)
        assert sse.events[-1]["type"] == "disconnected"
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("WebSocket")

        # A test send asks first: cancel sends nothing, confirm sends and says so.
        page.fill("#test-message", "checking in from support")
        page.click("#test-form button[type=submit]")
        expect(page.locator("#test-confirm")).to_be_visible()
        expect(page.locator("#test-confirm-text")).to_contain_text("Send this to gil?")
        page.save_screenshot("console-confirm")
        page.click("#test-confirm-cancel")
        expect(page.locator("#test-confirm")).to_be_hidden()
        page.click("#test-form button[type=submit]")
        page.click("#test-confirm-send")
        expect(page.locator("#test-result")).to_have_text("Sent.")
        item = page.locator("#live-feed .notif", has_text="checking in from support")
        expect(item).to_have_count(1, timeout=2000)
        item.locator(".show-trace").click()
        expect(item.locator(".trace-by")).to_have_text("sent from the console by admin")
        page.save_screenshot("console-user")

        # The audit log, from the top bar.
        page.click("#nav-audit")
        expect(page.page).to_have_url(one.url + "/dashboard/audit")
        audit = page.locator("#audit-list tbody tr")
        expect(audit).to_have_count(2)
        expect(audit.nth(0)).to_contain_text("sent a test notification")
        expect(audit.nth(1)).to_contain_text("closed a connection")
        expect(audit.nth(1)).to_contain_text("admin")
        page.save_screenshot("console-audit")

        # API keys: the secret once, then the list with its last use.
        page.click("#nav-keys")
        page.fill("#key-name", "crm")
        page.click("#create-key button[type=submit]")
        secret = page.locator("#new-key-secret").inner_text()
        assert secret.startswith("nk_")
        page.save_screenshot("console-api-keys")
        page.set_viewport_size({"width": 390, "height": 844})
        page.goto(one.url + "/dashboard/users/gil")
        page.save_screenshot("console-user-phone")

        # Without JavaScript the same form asks on a page of its own.
        plain = make_page(java_script_enabled=False)
        plain.goto(one.url + "/dashboard/users/gil")
        plain.fill("#username", "admin")
        plain.fill("#password", PASSWORD)
        plain.click("form button[type=submit]")
        plain.fill("#test-message", "sent without scripts")
        plain.click("#test-form button[type=submit]")
        expect(plain.locator("h1")).to_contain_text("Send this test notification to gil?")
        plain.save_screenshot("console-confirm-page")
        plain.click("#confirm-send")
        expect(plain.page).to_have_url(one.url + "/dashboard/users/gil")
        expect(plain.locator(".flash-info")).to_have_text("Test notification sent.")
        expect(plain.locator("#history .notif-message").first).to_have_text("sent without scripts")
    finally:
        sse.close()
        if ws is not None:
            ws.close()
