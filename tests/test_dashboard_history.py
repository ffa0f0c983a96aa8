"""The support console's history: pages by cursor, filters, bounded search, id jumps,
against the real MongoDB-wire server, with every query it sends checked for its index."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pymongo import monitoring

from app.dashboard.history import History, parse_filters
from app.store.models import notifications_collection
from app.store.serialization import new_document
from tests.support import winning_stages
from tests.test_dashboard import ADMIN, PASSWORD, notify, signed_in

USER = "pat"
COUNT = 130
CATEGORIES = ("billing", "security", "news")
NOW = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)


def created(i: int) -> datetime:
    """Notification i was sent i hours ago (i = 0 is the newest)."""
    return NOW - timedelta(hours=i)


@pytest.fixture
def dash(make_app: Callable[..., Flask]) -> Flask:
    app = make_app(ADMIN_USERNAME=ADMIN, ADMIN_PASSWORD=PASSWORD)
    with app.app_context():
        docs = []
        for i in range(COUNT):
            word = "zebra crossing" if i in (7, 111) else f"invoice {i}"
            doc = new_document(
                USER, f"message {i}: {word}", f"title {i}", CATEGORIES[i % 3], {"i": i}, created(i)
            )
            doc["seq"] = int(created(i).timestamp() * 1_000_000)
            docs.append(doc)
        notifications_collection().insert_many(docs)
        service = app.extensions["notifications"]
        service.change(USER, "read", [str(docs[i]["_id"]) for i in range(0, COUNT, 4)])
        service.change(USER, "archive", [str(docs[i]["_id"]) for i in (1, 2, 3)])
        service.change(USER, "delete", [str(docs[i]["_id"]) for i in (5, 6)])
    app.config["ids"] = [str(d["_id"]) for d in docs]  # newest first
    return app


class Finds(monitoring.CommandListener):
    """Every ``find`` the app sends to the notifications collection while recording."""

    def __init__(self) -> None:
        self.recording = False
        self.commands: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.recording and event.command_name == "find" and event.command["find"] == "notifications":
            self.commands.append(dict(event.command))

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


_finds = Finds()
monitoring.register(_finds)  # clients made from now on report to it; it records only in a test


@pytest.fixture
def finds() -> Iterator[Finds]:
    _finds.commands, _finds.recording = [], True
    yield _finds
    _finds.recording = False


def ids_on(page: bytes) -> list[str]:
    history = page.split(b'id="history"', 1)[1].split(b"</ol>", 1)[0]
    return [m.decode() for m in re.findall(rb'data-id="([0-9a-f]{24})"', history)]


def link(page: bytes, name: str) -> str | None:
    found = re.search(rb'id="history-' + name.encode() + rb'"[^>]*href="([^"]+)"', page)
    return found.group(1).decode().replace("&amp;", "&") if found else None


def get(client: FlaskClient, url: str, status: int = 200) -> bytes:
    resp = client.get(url)
    assert resp.status_code == status, (resp.status_code, resp.text[:2000])
    return resp.data


def expected(dash: Flask, keep: Callable[[int], bool]) -> list[str]:
    return [dash.config["ids"][i] for i in range(COUNT) if keep(i)]


READ = {i for i in range(0, COUNT, 4)}
ARCHIVED, DELETED = {1, 2, 3}, {5, 6}


def walk(client: FlaskClient, url: str) -> tuple[list[list[str]], list[bytes]]:
    pages, bodies = [], []
    while url:
        body = get(client, url)
        pages.append(ids_on(body))
        bodies.append(body)
        url = link(body, "older")
    return pages, bodies


def test_pages_walk_the_whole_history_by_cursor_and_back(dash: Flask, finds: Finds) -> None:
    client = signed_in(dash)
    inbox = expected(dash, lambda i: i not in ARCHIVED | DELETED)
    pages, bodies = walk(client, f"/dashboard/users/{USER}")
    assert [len(p) for p in pages] == [50, 50, len(inbox) - 100]
    assert [i for p in pages for i in p] == inbox  # newest first, each once
    assert b'id="history-empty" hidden' in bodies[0] and link(bodies[0], "newer") is None
    assert b'data-first="true"' in bodies[0] and b'data-first="false"' in bodies[1]
    assert link(bodies[-1], "older") is None
    # Newer from the last page is the middle one again; newer from there is the newest, full.
    middle = get(client, link(bodies[-1], "newer"))
    assert ids_on(middle) == pages[1]
    newest = get(client, link(middle, "newer"))
    assert ids_on(newest) == pages[0] and b'data-first="true"' in newest
    # Cursors are ids in the links, never a seq in the page.
    with dash.app_context():
        seqs = [str(d["seq"]) for d in notifications_collection().find({"user_id": USER}, {"seq": 1})]
    assert not any(s.encode() in b for b in bodies for s in seqs)
    assert b"<details" in bodies[0] and b"<summary>data</summary>" in bodies[0]
    assert_indexed(dash, finds)


@pytest.mark.parametrize(
    ("args", "keep"),
    [
        ("state=unread", lambda i: i not in READ | ARCHIVED | DELETED),
        ("state=read", lambda i: i in READ and i not in ARCHIVED | DELETED),
        ("state=archived", lambda i: i in ARCHIVED),
        ("state=deleted", lambda i: i in DELETED),
        ("state=all", lambda i: True),
        ("category=billing", lambda i: i % 3 == 0 and i not in ARCHIVED | DELETED),
        ("state=all&category=news&q=INVOICE", lambda i: i % 3 == 2 and i not in (7, 111)),
        ("q=zebra", lambda i: i in (7, 111)),
    ],
)
def test_filters_and_search_select_across_pages(dash: Flask, finds: Finds, args: str, keep: Any) -> None:
    pages, bodies = walk(signed_in(dash), f"/dashboard/users/{USER}?{args}")
    assert [i for p in pages for i in p] == expected(dash, keep)
    assert all(len(p) <= 50 for p in pages)
    assert b'data-first="true"' in bodies[0]
    assert_indexed(dash, finds)


def test_a_date_range_is_whole_days_in_the_browsers_zone(dash: Flask, finds: Finds) -> None:
    client = signed_in(dash)
    day = (NOW - timedelta(days=2)).date()
    pages, _ = walk(client, f"/dashboard/users/{USER}?state=all&from={day}&to={day}")
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    in_day = expected(dash, lambda i: start <= created(i) < start + timedelta(days=1))
    assert [i for p in pages for i in p] == in_day and len(in_day) == 24
    pages, _ = walk(client, f"/dashboard/users/{USER}?state=all&from={day}&to={day}&tz=Asia/Tokyo")
    tokyo = start - timedelta(hours=9)
    assert [i for p in pages for i in p] == expected(
        dash, lambda i: tokyo <= created(i) < tokyo + timedelta(days=1)
    )
    assert_indexed(dash, finds)


def test_a_text_search_reads_a_bounded_window_and_goes_on_from_it(dash: Flask) -> None:
    history = History(page_size=5, scan_limit=40)
    with dash.app_context():
        first = history.page(USER, {"q": "zebra", "state": "all"})
        assert [n["id"] for n in first.notifications] == [dash.config["ids"][7]]
        assert first.stopped and first.older == dash.config["ids"][39]  # the last one it read
        second = history.page(USER, {"q": "zebra", "state": "all", "before": first.older})
        assert second.notifications == [] and second.stopped and second.older == dash.config["ids"][79]
        third = history.page(USER, {"q": "zebra", "state": "all", "before": second.older})
        assert [n["id"] for n in third.notifications] == [dash.config["ids"][111]]
        assert third.stopped and third.older == dash.config["ids"][119]
        last = history.page(USER, {"q": "zebra", "state": "all", "before": third.older})
        assert last.notifications == [] and not last.stopped and last.older is None  # the end
        more = history.page(USER, {"q": "invoice", "state": "all"})  # a full page stops early
        assert len(more.notifications) == 5 and not more.stopped


def test_a_notification_id_opens_it_on_its_users_page(dash: Flask, finds: Finds) -> None:
    client = signed_in(dash)
    other = notify(dash, "quinn", "for quinn")
    for url in (f"/dashboard/users/{USER}?id={other['id']}", f"/dashboard/users/{USER}?q={other['id']}"):
        resp = client.get(url)
        assert resp.status_code == 302
        assert resp.headers["Location"] == f"/dashboard/users/quinn?at={other['id']}#n-{other['id']}"
    assert (
        client.get(f"/dashboard/search?q={other['id'].upper()}")
        .headers["Location"]
        .startswith(f"/dashboard/users/quinn?at={other['id']}")
    )
    target = dash.config["ids"][60]
    page = get(client, client.get(f"/dashboard/users/{USER}?id={target}").headers["Location"])
    shown = ids_on(page)
    assert shown[0] == target and len(shown) == 50
    assert re.search(rb'class="notif[^"]*is-focus"[^>]*data-id="' + target.encode(), page)
    assert b'data-first="false"' in page
    assert ids_on(get(client, link(page, "newer")))[-1] == dash.config["ids"][59]
    assert_indexed(dash, finds)


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        ("id=12345", 422, "is not a notification id"),
        ("id=" + "a" * 24, 404, "No notification has the id"),
        ("state=bogus", 422, "state: “bogus” is not one of"),
        ("from=2026-13-01", 422, "from: “2026-13-01” is not a date"),
        ("from=2026-05-02&to=2026-05-01", 422, "the range ends before it starts"),
        ("from=2026-05-02&tz=Mars/Olympus", 422, "is not a time zone"),
        ("from=2026-05-02&tz=America", 422, "is not a time zone"),
        ("to=9999-12-31", 422, "a date out of range"),
        ("before=nonsense", 422, "This page link is broken"),
        ("after=" + "b" * 24, 404, "The notification this page started from is gone"),
        ("category=" + "c" * 65, 422, "category: at most 64 characters"),
    ],
)
def test_bad_filters_and_links_are_a_message_on_the_page(
    dash: Flask, args: str, status: int, message: str
) -> None:
    body = get(signed_in(dash), f"/dashboard/users/{USER}?{args}", status).decode()
    error = re.search(r'id="history-error"[^>]*>([^<]*)<', body)
    assert error and message in error.group(1), body[-3000:]
    assert ids_on(body.encode()) == [] and 'id="history-filter"' in body


def test_a_notification_id_that_is_a_user_id_too_falls_back_to_the_user_search(dash: Flask) -> None:
    client = signed_in(dash)
    hexy = "c" * 24
    notify(dash, hexy, "a user whose id looks like a notification id")
    assert client.get(f"/dashboard/search?q={hexy}").headers["Location"] == f"/dashboard/users/{hexy}"


def test_parse_filters_checks_every_field() -> None:
    f = parse_filters(
        {"state": "read", "category": "x", "from": "2026-01-01", "to": "2026-01-01", "tz": "UTC"}
    )
    assert f.since == datetime(2026, 1, 1, tzinfo=timezone.utc) and f.until == datetime(
        2026, 1, 2, tzinfo=timezone.utc
    )
    assert f.live()["since"] == "2026-01-01T00:00:00Z" and f.active
    assert f.args() == {
        "state": "read",
        "category": "x",
        "from": "2026-01-01",
        "to": "2026-01-01",
        "tz": "UTC",
    }


def assert_indexed(dash: Flask, finds: Finds) -> None:
    """Every find the pages sent is planned on an index, none as a collection scan."""
    assert finds.commands
    with dash.app_context():
        db = notifications_collection().database
        for command in finds.commands:
            query = {
                k: v
                for k, v in command.items()
                if k in ("find", "filter", "sort", "hint", "limit", "projection")
            }
            plan = db.command("explain", query, verbosity="queryPlanner")["queryPlanner"]["winningPlan"]
            stages = winning_stages(plan)
            assert "COLLSCAN" not in stages and ("IXSCAN" in stages or "IDHACK" in stages), (command, stages)
