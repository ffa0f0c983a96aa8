"""The console's history in headless Chromium against real gunicorn: paging, a filter,
search, a live notification merging once, readable times; and the same pages without
JavaScript."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from playwright.sync_api import expect
from pymongo import MongoClient

from app.store.serialization import new_document
from tests.browser import BrowserPage, make_page  # noqa: F401
from tests.test_dashboard_browser import PASSWORD, sign_in

USER = "rita"
CATEGORIES = ("billing", "news")


def seed(mongo_uri: str, count: int = 120) -> list[str]:
    """``count`` notifications, one an hour back from now (newest first), stored as sent."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    docs = []
    for i in range(count):
        at = now - timedelta(hours=i, minutes=3)
        word = "zebra crossing ahead" if i == 70 else f"invoice {i}"
        doc = new_document(USER, f"{word}", f"Notice {i}", CATEGORIES[i % 2], {"order": i}, at)
        doc["seq"] = int(at.timestamp() * 1_000_000)
        docs.append(doc)
    MongoClient(mongo_uri, directConnection=True).get_database().notifications.insert_many(docs)
    return [str(d["_id"]) for d in docs]


def history_ids(page: BrowserPage) -> list[str]:
    return page.locator("#history > li").evaluate_all("items => items.map(li => li.dataset.id)")


@pytest.mark.browser
def test_history_pages_filters_searches_and_merges_live_items(
    live: Callable[..., Any],
    stack: Any,
    make_page: Callable[..., BrowserPage],  # noqa: F811
) -> None:
    server = live(workers=2, ADMIN_USERNAME="admin", ADMIN_PASSWORD=PASSWORD, DASHBOARD_TICK_SECONDS="0.5")
    ids = seed(stack.mongo_uri)
    page = make_page(timezone_id="America/New_York")
    sign_in(page, server.url + f"/dashboard/users/{USER}")
    expect(page.page).to_have_url(server.url + f"/dashboard/users/{USER}")
    expect(page.locator("#live-state")).to_have_attribute("data-state", "connected")
    assert history_ids(page) == ids[:50]

    # Times read as people read them; the exact local time on hover; data collapsed.
    first = page.locator("#history > li").first
    expect(first.locator("time")).to_have_text("3 minutes ago")
    assert re.search(
        r"\d{1,2}:\d{2}:\d{2} [AP]M (EST|EDT)$", first.locator("time").get_attribute("title") or ""
    )
    assert first.locator("details.notif-data").get_attribute("open") is None
    expect(first.locator("details.notif-data code")).to_be_hidden()
    first.locator("details.notif-data summary").click()
    expect(first.locator("details.notif-data code")).to_have_text('{"order":0}')
    assert page.locator("#history-tz").input_value() == "America/New_York"
    assert not re.search(r"\b\d{16}\b", page.locator("body").inner_text())  # no cursor in the text

    # Older, older, newer: cursors in the links, every notification once.
    page.click("#history-older")
    expect(page.page).to_have_url(re.compile(r"before=" + ids[49]))
    assert history_ids(page) == ids[50:100]
    expect(page.locator("#history time").first).to_have_text("2 days ago")
    page.click("#history-older")
    assert history_ids(page) == ids[100:]
    expect(page.locator("#history-older")).to_have_count(0)
    page.click("#history-newer")
    assert history_ids(page) == ids[50:100]
    page.save_screenshot("dashboard-history-page-2")

    # A filter (from the form), then search; a bad date is a message.
    page.select_option("#history-state", "all")
    page.fill("#history-category", "news")
    page.click("#history-filter button[type=submit]")
    expect(page.page).to_have_url(re.compile(r"category=news"))
    assert history_ids(page) == [ids[i] for i in range(1, 100, 2)]
    expect(page.locator("#history .tag")).to_have_text(["news"] * 50)
    page.fill("#history-category", "")
    page.fill("#history-q", "ZEBRA")
    page.click("#history-filter button[type=submit]")
    assert history_ids(page) == [ids[70]]
    expect(page.locator("#history .notif-message")).to_have_text("zebra crossing ahead")
    page.allow_console_errors(r"status of 422")  # the page that names the bad id answers 422
    page.fill("#history-id", "not-an-id")
    page.click(".filters.jump button[type=submit]")
    expect(page.locator("#history-error")).to_contain_text("“not-an-id” is not a notification id")

    # Live: on the newest page of a category filter, a matching notification joins the top
    # once, one of another category does not.
    page.goto(server.url + f"/dashboard/users/{USER}?category=billing")
    expect(page.locator("#live-state")).to_have_attribute("data-state", "connected")
    before = history_ids(page)
    other = server.post("/api/notifications", {"user_id": USER, "message": "newsletter", "category": "news"})
    match = server.post(
        "/api/notifications", {"user_id": USER, "message": "live invoice", "category": "billing"}
    )
    expect(page.locator("#live-feed .notif-message")).to_have_text(["live invoice", "newsletter"])
    expect(page.locator("#history .notif-message").first).to_have_text("live invoice")
    assert history_ids(page) == [match.json()["id"], *before]
    assert other.json()["id"] not in history_ids(page)
    expect(page.locator("#history time").first).to_have_text("just now")
    # The same event again (a stream resumed over it): still once.
    page.evaluate(
        """n => document.dispatchEvent(new CustomEvent("dashboard:notification",
             {detail: {notification: n, build: () => document.createElement("li")}}))""",
        match.json(),
    )
    assert history_ids(page).count(match.json()["id"]) == 1
    page.save_screenshot("dashboard-history-live")
    page.locator("#history-card h2").scroll_into_view_if_needed()
    page.evaluate("() => document.getElementById('history-card').scrollIntoView()")
    page.save_screenshot("dashboard-history-view", full_page=False)
    page.set_viewport_size({"width": 390, "height": 844})
    page.evaluate("() => document.getElementById('history-card').scrollIntoView()")
    page.save_screenshot("dashboard-history-phone", full_page=False)
    page.set_viewport_size({"width": 1100, "height": 800})

    # An older page does not take live ones (they belong on the newest page).
    page.click("#history-older")
    expect(page.locator("#live-state")).to_have_attribute("data-state", "connected")
    server.notify(USER, "another live one")
    expect(page.locator("#live-feed .notif-message").first).to_have_text("another live one")
    assert "another live one" not in page.locator("#history").inner_text()


@pytest.mark.browser
def test_history_works_without_javascript(
    live: Callable[..., Any],
    stack: Any,
    make_page: Callable[..., BrowserPage],  # noqa: F811
) -> None:
    server = live(workers=1, ADMIN_USERNAME="admin", ADMIN_PASSWORD=PASSWORD)
    ids = seed(stack.mongo_uri, 60)
    page = make_page(java_script_enabled=False)
    sign_in(page, server.url + f"/dashboard/users/{USER}")
    expect(page.page).to_have_url(server.url + f"/dashboard/users/{USER}")
    assert history_ids(page) == ids[:50]
    expect(page.locator("#history time").first).to_have_text(
        re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
    )
    page.click("#history-older")
    assert history_ids(page) == ids[50:]
    page.fill("#history-q", "invoice 5")
    page.click("#history-filter button[type=submit]")
    assert history_ids(page) == [ids[5], *ids[50:60]]
    page.fill("#history-id", ids[55])
    page.click(".filters.jump button[type=submit]")
    expect(page.page).to_have_url(re.compile(r"at=" + ids[55]))
    assert history_ids(page)[0] == ids[55]
    expect(page.locator("#history > li").first).to_have_class(re.compile("is-focus"))
    page.save_screenshot("dashboard-history-nojs-focus", full_page=False)
