"""Support dashboard: staff sessions, CSRF, login throttling, pages, JSON, streams, presence."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
import orjson
import pytest
import redis
import requests
from flask import Flask
from flask.testing import FlaskClient

from app.dashboard import staff
from app.delivery.presence import Presence
from tests.support import SSEClient

ADMIN = "admin"
PASSWORD = "correct horse battery"
XSS = "<script>alert(1)</script>"


@pytest.fixture
def dash(make_app: Callable[..., Flask]) -> Flask:
    return make_app(ADMIN_USERNAME=ADMIN, ADMIN_PASSWORD=PASSWORD, DASHBOARD_TICK_SECONDS=0.2)


def csrf(client: FlaskClient) -> str:
    client.get("/dashboard/login")
    with client.session_transaction() as sess:
        return sess["csrf"]


def login(client: FlaskClient, username: str = ADMIN, password: str = PASSWORD, **kw: Any):
    token = csrf(client)
    return client.post(
        "/dashboard/login", data={"username": username, "password": password, "csrf_token": token}, **kw
    )


def signed_in(app: Flask) -> FlaskClient:
    client = app.test_client()
    resp = login(client)
    assert resp.status_code == 302 and resp.headers["Location"] == "/dashboard", resp.text
    return client


def token_of(client: FlaskClient) -> str:
    with client.session_transaction() as sess:
        return sess["csrf"]


def notify(app: Flask, user: str, message: str, title: str = "") -> dict[str, Any]:
    with app.app_context():
        return app.extensions["notifications"].create([user], message, title=title).notifications[0]


# -- access ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/users/alice", "/dashboard/search?q=al"])
def test_pages_redirect_to_login_without_session(dash: Flask, path: str) -> None:
    resp = dash.test_client().get(path)
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith("/dashboard/login?next=/dashboard")


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/api/overview",
        "/dashboard/api/overview/stream",
        "/dashboard/api/users/alice/stream",
        "/dashboard/api/users/alice/history",
        "/dashboard/api/users/alice/status",
    ],
)
def test_json_and_streams_answer_401_without_session(dash: Flask, path: str) -> None:
    resp = dash.test_client().get(path)
    assert resp.status_code == 401
    assert resp.json["error"]["code"] == "unauthorized"


def test_login_logout_and_a_copied_cookie_stops_working(dash: Flask) -> None:
    client = signed_in(dash)
    page = client.get("/dashboard")
    assert page.status_code == 200 and b"Overview" in page.data
    assert client.get("/dashboard/").headers["Location"] == "/dashboard"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    stolen = client.get_cookie("session").value
    resp = client.post("/dashboard/logout", data={"csrf_token": token_of(client)})
    assert resp.status_code == 302 and resp.headers["Location"] == "/dashboard/login"
    assert client.get("/dashboard").status_code == 302
    replay = dash.test_client()
    replay.set_cookie("session", stolen)
    assert replay.get("/dashboard").status_code == 302
    assert replay.get("/dashboard/api/overview").status_code == 401


def test_login_next_stays_inside_the_dashboard(dash: Flask) -> None:
    client = dash.test_client()
    token = csrf(client)
    form = {"username": ADMIN, "password": PASSWORD, "csrf_token": token, "next": "//evil.example/x"}
    assert client.post("/dashboard/login", data=form).headers["Location"] == "/dashboard"
    client = dash.test_client()
    form.update(csrf_token=csrf(client), next="/dashboard/users/bob")
    assert client.post("/dashboard/login", data=form).headers["Location"] == "/dashboard/users/bob"


def test_wrong_password_and_disabled_account_are_refused(dash: Flask) -> None:
    client = dash.test_client()
    resp = login(client, password="wrong password")
    assert resp.status_code == 401 and b"Wrong username or password" in resp.data
    assert login(client, username="nobody").status_code == 401
    live = signed_in(dash)
    with dash.app_context():
        staff.set_disabled(ADMIN, True)
    assert live.get("/dashboard").status_code == 302  # the open session ended
    assert login(dash.test_client()).status_code == 401


# -- CSRF --------------------------------------------------------------------------------
def test_login_form_without_or_with_a_wrong_csrf_token_is_403(dash: Flask) -> None:
    client = dash.test_client()
    csrf(client)
    form = {"username": ADMIN, "password": PASSWORD}
    assert client.post("/dashboard/login", data=form).status_code == 403
    resp = client.post("/dashboard/login", data={**form, "csrf_token": "forged"})
    assert resp.status_code == 403 and b"CSRF" in resp.data


def test_state_changing_requests_need_the_csrf_token(dash: Flask) -> None:
    client = signed_in(dash)
    note = notify(dash, "carol", "first")
    token = token_of(client)
    read = "/dashboard/api/users/carol/read"
    resp = client.post(read, json={"ids": [note["id"]]})
    assert resp.status_code == 403 and resp.json["error"]["code"] == "csrf_failed"
    resp = client.post(read, json={"ids": [note["id"]]}, headers={"X-CSRF-Token": "x" + token})
    assert resp.status_code == 403
    resp = client.post(read, json={"ids": [note["id"]]}, headers={"X-CSRF-Token": token})
    assert resp.status_code == 200 and resp.json == {"updated": 1, "unread": 0}

    form = "/dashboard/users/carol/test-notification"
    assert client.post(form, data={"message": "hi"}).status_code == 403
    assert client.post("/dashboard/logout").status_code == 403  # still signed in afterwards
    asked = client.post(form, data={"message": "hi", "csrf_token": token})  # the confirm step first
    assert asked.status_code == 200 and b'name="confirmed" value="yes"' in asked.data
    resp = client.post(form, data={"message": "hi", "csrf_token": token, "confirmed": "yes"})
    assert resp.status_code == 302
    sent = client.post(
        "/dashboard/api/users/carol/notifications",
        json={"message": "via fetch"},
        headers={"X-CSRF-Token": token},
    )
    assert sent.status_code == 201 and sent.json["notification"]["category"] == "test"
    history = client.get("/dashboard/api/users/carol/history").json
    assert [n["message"] for n in history["notifications"]] == ["via fetch", "hi", "first"]


# -- throttling ------------------------------------------------------------------------
def test_login_is_locked_per_username_after_repeated_failures(make_app: Callable[..., Flask]) -> None:
    app = make_app(ADMIN_USERNAME=ADMIN, ADMIN_PASSWORD=PASSWORD, LOGIN_MAX_FAILURES=3)
    client = app.test_client()
    for _ in range(3):
        assert login(client, password="wrong password").status_code == 401
    resp = login(client)  # the right password, but locked now
    assert resp.status_code == 429 and b"Too many failed sign-in attempts" in resp.data
    with app.app_context():
        staff.create("second", "another password")
    assert login(app.test_client(), "second", "another password").status_code == 302  # other names unaffected


def test_login_is_locked_per_ip_and_unlocks_after_the_lock_period(make_app: Callable[..., Flask]) -> None:
    app = make_app(
        ADMIN_USERNAME=ADMIN, ADMIN_PASSWORD=PASSWORD, LOGIN_IP_MAX_FAILURES=3, LOGIN_LOCK_SECONDS=1
    )
    client = app.test_client()
    for name in ("u1", "u2", "u3"):
        assert login(client, username=name, password="wrong password").status_code == 401
    assert login(client).status_code == 429
    other = app.test_client()
    assert login(other, environ_base={"REMOTE_ADDR": "10.9.8.7"}).status_code == 302
    deadline = time.monotonic() + 5
    while (status := login(client).status_code) == 429 and time.monotonic() < deadline:
        gevent.sleep(0.2)
    assert status == 302


def test_a_store_outage_gives_a_clear_503(make_app: Callable[..., Flask]) -> None:
    app = make_app(ADMIN_USERNAME=ADMIN, ADMIN_PASSWORD=PASSWORD, REDIS_URL="redis://127.0.0.1:1/0")
    client = app.test_client()
    assert client.get("/dashboard/login").status_code == 200  # the form still shows
    resp = login(client)
    assert resp.status_code == 503 and b"is unavailable" in resp.data


# -- pages and JSON ----------------------------------------------------------------------
def test_user_page_escapes_content_and_shows_cache_state(dash: Flask) -> None:
    client = signed_in(dash)
    notify(dash, "dave", XSS, title="<b>bold</b>")
    page = client.get("/dashboard/users/dave")
    assert page.status_code == 200
    assert XSS.encode() not in page.data and b"&lt;script&gt;alert(1)&lt;/script&gt;" in page.data
    assert b"<b>bold</b>" not in page.data
    assert b'data-state="cached"' in page.data  # the page read filled the cache
    status = client.get("/dashboard/api/users/dave/status").json
    assert status["cache"]["cached"] is True and 0 < status["cache"]["ttl"] <= 120
    assert status["unread"] == 1 and status["connections"] == 0 and status["online"] is False
    notify(dash, "dave", "second")
    status = client.get("/dashboard/api/users/dave/status").json
    assert status["cache"] == {"cached": False, "ttl": None} and status["unread"] == 2


def test_user_page_shows_the_users_preferences(dash: Flask) -> None:
    client = signed_in(dash)
    page = client.get("/dashboard/users/erin").get_data(as_text=True)
    assert '<dd data-category="">inbox, live, push</dd>' in page and '<dd id="quiet-hours">none</dd>' in page
    body = {
        "categories": {"<promo>": ["muted"], "ads": [], "chat": ["live"]},
        "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Europe/Paris"},
    }
    auth = {"Authorization": f"Bearer {dash.extensions['config'].API_KEYS[0]}"}
    assert dash.test_client().put("/api/users/erin/preferences", json=body, headers=auth).status_code == 200
    page = client.get("/dashboard/users/erin").get_data(as_text=True)
    assert '<dt>&lt;promo&gt;</dt><dd data-category="&lt;promo&gt;">inbox only (muted)</dd>' in page
    assert '<dd data-category="ads">off: not in the inbox, not sent</dd>' in page
    assert '<dd data-category="chat">inbox, live</dd>' in page
    assert "22:00–07:00 (Europe/Paris)" in page


def test_unknown_and_invalid_users_get_clear_messages(dash: Flask) -> None:
    client = signed_in(dash)
    page = client.get("/dashboard/users/never-seen")
    assert page.status_code == 200 and b"has never received a notification" in page.data
    bad = client.get("/dashboard/users/not%20valid!")
    assert bad.status_code == 404 and b"is not a valid user id" in bad.data
    assert client.get("/dashboard/api/users/not%20valid!/status").json["error"]["code"] == "not_found"
    assert client.get("/dashboard/search?q=nobody-like-this").status_code == 200


def test_search_finds_users_by_prefix(dash: Flask) -> None:
    client = signed_in(dash)
    for user in ("erin", "erik", "erj", "er", "frank"):
        notify(dash, user, "hello")
    page = client.get("/dashboard/search?q=eri")
    assert b"/dashboard/users/erin" in page.data and b"/dashboard/users/erik" in page.data
    assert b"frank" not in page.data and b"users/erj" not in page.data and b'users/er"' not in page.data
    assert client.get("/dashboard/search?q=frank").headers["Location"] == "/dashboard/users/frank"


def test_overview_counts_notifications_and_lists_recent(dash: Flask) -> None:
    client = signed_in(dash)
    with dash.app_context():
        dash.extensions["notifications"].create(["gina", "hank", "ivan"], "batch")
    notify(dash, "gina", XSS)
    stats = client.get("/dashboard/api/overview").json
    assert stats["last_minute"] == 4 and stats["last_hour"] == 4 and sum(stats["series"]) == 4
    assert len(stats["series"]) == 120
    page = client.get("/dashboard")
    assert b"&lt;script&gt;" in page.data and XSS.encode() not in page.data


# -- streams -----------------------------------------------------------------------------
class Frames:
    """Reads an SSE response of the Flask test client in a greenlet."""

    def __init__(self, resp: Any) -> None:
        self.resp = resp
        self.frames: list[tuple[str, Any]] = []
        self.done = False
        self.greenlet = gevent.spawn(self._read)

    def _read(self) -> None:
        buf = b""
        try:
            for chunk in self.resp.response:
                buf += chunk
                while b"\n\n" in buf:
                    raw, buf = buf.split(b"\n\n", 1)
                    fields = dict(
                        line.split(": ", 1)
                        for line in raw.decode().split("\n")
                        if ": " in line and line[0] != ":"
                    )
                    if "event" in fields:
                        self.frames.append((fields["event"], orjson.loads(fields.get("data", "null"))))
        finally:
            self.done = True

    def wait(self, predicate: Callable[[list[tuple[str, Any]]], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.frames):
            assert time.monotonic() < deadline, f"not seen in {timeout}s: {self.frames[-5:]}"
            gevent.sleep(0.02)

    def close(self) -> None:
        self.greenlet.kill()
        self.resp.close()


def test_user_stream_pushes_notifications_status_and_ends_on_logout(dash: Flask) -> None:
    client = signed_in(dash)
    notify(dash, "jane", "old one")
    client.get("/dashboard/users/jane")  # fills the cache
    frames = Frames(client.get("/dashboard/api/users/jane/stream", buffered=False))
    try:
        frames.wait(lambda fs: any(k == "status" and d["cache"]["cached"] for k, d in fs))
        notify(dash, "jane", XSS)
        frames.wait(lambda fs: any(k == "notification" and d["message"] == XSS for k, d in fs))
        frames.wait(lambda fs: fs[-1][0] == "status" and fs[-1][1]["cache"]["cached"] is False)
        assert frames.frames[-1][1]["unread"] == 2
        client.post("/dashboard/logout", data={"csrf_token": token_of(client)})
        frames.wait(lambda fs: fs[-1][0] == "signed_out")
        frames.wait(lambda fs: frames.done)
    finally:
        frames.close()


def test_user_stream_resumes_after_last_event_id(dash: Flask) -> None:
    client = signed_in(dash)
    first = notify(dash, "lena", "first")
    notify(dash, "lena", "missed while reconnecting")
    resp = client.get(
        "/dashboard/api/users/lena/stream", headers={"Last-Event-ID": str(first["seq"])}, buffered=False
    )
    frames = Frames(resp)
    try:
        frames.wait(lambda fs: any(k == "status" for k, _ in fs))
        assert [d["message"] for k, d in frames.frames if k == "notification"] == [
            "missed while reconnecting"
        ]
    finally:
        frames.close()


def test_overview_stream_pushes_new_notifications_and_stats(dash: Flask) -> None:
    client = signed_in(dash)
    frames = Frames(client.get("/dashboard/api/overview/stream", buffered=False))
    try:
        frames.wait(lambda fs: any(k == "stats" for k, _ in fs))
        dash.extensions["hub"].connected.wait(5)
        notify(dash, "kate", "live one")
        frames.wait(lambda fs: any(k == "notification" and d["user_id"] == "kate" for k, d in fs))
        frames.wait(lambda fs: any(k == "stats" and d["last_minute"] == 1 for k, d in fs))
    finally:
        frames.close()


# -- presence ----------------------------------------------------------------------------
class FakeHub:
    """Stands in for a worker's hub: only its registry of subscriptions is read."""

    def __init__(self, hub_id: str, users: dict[str, int]) -> None:
        self.hub_id = hub_id
        self.users = {u: {conn(f"{hub_id}-{u}-{i}") for i in range(n)} for u, n in users.items()}


@dataclass(eq=False)
class FakeSub:
    connection: str | None
    since: float = field(default_factory=time.time)
    closed: bool = False


def conn(connection: str | None) -> FakeSub:
    return FakeSub(connection)


def test_presence_sums_workers_excludes_staff_and_forgets_dead_workers(dash: Flask) -> None:
    config = dash.extensions["config"].with_overrides(PRESENCE_INTERVAL_SECONDS=0.2)
    client = dash.extensions["redis"]
    one = Presence(config, client, FakeHub("w1", {"amy": 2, "bo": 1}))
    two = Presence(config, client, FakeHub("w2", {"amy": 1, "cy": 3}))
    two.hub.users["cy"].add(conn(None))  # a staff viewer's stream names no connection
    one.publish_once()
    two.publish_once()
    summary = one.summary()
    assert (summary.workers, summary.connections, summary.online_users) == (2, 7, 3)
    assert one.user_connections("amy") == 3 and one.user_connections("cy") == 3
    assert one.user_connections("nobody") == 0
    two.start()  # keeps refreshing; `one` stops, like a killed worker
    try:
        deadline = time.monotonic() + 5
        while one.summary().workers != 1:
            assert time.monotonic() < deadline, "a dead worker's presence did not expire"
            gevent.sleep(0.05)
        summary = one.summary()
        assert (summary.connections, summary.online_users) == (4, 2)
    finally:
        two.stop()
    assert one.summary().workers == 0  # a clean stop removes its snapshot at once


def test_bootstrap_admin_is_idempotent_and_keeps_a_reset_password(dash: Flask) -> None:
    config = dash.extensions["config"]
    with dash.app_context():
        assert staff.ensure_admin(config) is True
        assert staff.ensure_admin(config) is False
        staff.reset_password(ADMIN, "a new password")
        staff.ensure_admin(config)
        assert staff.authenticate(ADMIN, "a new password") is not None
        assert [u.username for u in staff.all_users()] == [ADMIN]


# -- presence against real gunicorn workers ----------------------------------------------
def requests_login(url: str) -> requests.Session:
    http = requests.Session()
    page = http.get(url + "/dashboard/login", timeout=10).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    resp = http.post(
        url + "/dashboard/login",
        data={"username": ADMIN, "password": PASSWORD, "csrf_token": token},
        allow_redirects=False,
        timeout=10,
    )
    assert resp.status_code == 302, resp.text
    return http


@pytest.mark.slow
def test_overview_counts_every_worker_and_drops_a_killed_one(live: Callable[..., Any]) -> None:
    server = live(workers=2, ADMIN_USERNAME=ADMIN, ADMIN_PASSWORD=PASSWORD, PRESENCE_INTERVAL_SECONDS="0.3")
    http = requests_login(server.url)
    clients = [SSEClient(server.url, server.token(f"u{i % 4}")) for i in range(8)]

    def overview() -> dict[str, Any]:
        # a fresh connection each time: a kept-alive one may belong to the worker we kill
        resp = http.get(server.url + "/dashboard/api/overview", headers={"Connection": "close"}, timeout=10)
        return resp.json()

    def wait_until(predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while not predicate(stats := overview()):
            assert time.monotonic() < deadline, f"{what}: {stats}"
            gevent.sleep(0.1)
        return stats

    def alive() -> int:
        return sum(not c.closed.is_set() for c in clients)

    try:
        t0 = time.monotonic()
        stats = wait_until(lambda s: s["connections"] == 8 and s["workers"] == 2, "all clients counted")
        assert stats["online_users"] == 4
        t1 = time.monotonic()
        redis_client = redis.Redis.from_url(server.stack.redis_url)
        prefix = server.stack.prefix + "{all}:presence:"
        busy = [
            int(w.split(b":")[1])
            for w in redis_client.zrange(prefix + "workers", 0, -1)
            if orjson.loads(redis_client.get(prefix.encode() + b"m:" + w) or b"{}").get("connections")
        ]
        os.kill(busy[0], signal.SIGKILL)  # no clean exit: only the TTL removes its snapshot
        # Figures computed after the kill (each worker shares one for a second): they must drop
        # to the clients still connected once the dead worker's keys expire.
        killed_at = redis_client.time()[0]
        wait_until(
            lambda s: s["now"] > killed_at and alive() < 8 and s["connections"] == alive(),
            "the dead worker's connections expired",
        )
        print(f"counted in {t1 - t0:.2f}s, dead worker gone after {time.monotonic() - t1:.2f}s")
    finally:
        for client in clients:
            client.close()
        http.close()  # no idle keep-alive connection for gunicorn to wait on when it stops


def test_start_background_bootstraps_the_admin_account(dash: Flask) -> None:
    from app import start_background

    start_background(dash)
    deadline = time.monotonic() + 10
    while not dash.extensions.get("dashboard_bootstrapped"):
        assert time.monotonic() < deadline, "admin not created at start-up"
        gevent.sleep(0.05)
    with dash.app_context():
        assert [u.username for u in staff.all_users()] == [ADMIN]


# -- delivery trace --------------------------------------------------------------------
def test_trace_timeline_data_and_verdict(dash: Flask) -> None:
    client = signed_in(dash)
    with dash.app_context():
        service = dash.extensions["notifications"]
        created = service.create(
            ["erin"], "m", priority="high", actions=[{"label": "Open", "url": "/runs/1"}]
        ).notifications[0]
    page = client.get("/dashboard/users/erin")
    assert b"priority-high" in page.data and b'href="/runs/1"' in page.data and b"show-trace" in page.data
    assert client.get("/dashboard/api/notifications/6650f0c2a1b2c3d4e5f60718/trace").status_code == 404
    with dash.app_context():
        service.receipts.sent(created["id"], "ws~host~1~1")
        service.receipts.sent(created["id"], "sse~host~1~2")
        service.receipts.sent(created["id"], "ws~host~2~3")
        service.acknowledge("erin", [created["id"]], "ws~host~1~1")
        service.acknowledge("erin", [created["id"]], "sse~host~1~2")
        service.receipts.flush()
    body = client.get(f"/dashboard/api/notifications/{created['id']}/trace").json
    received_at = body["delivery"]["received_at"]
    assert body["verdict"] == f"received by 2 of 3 connections at {received_at[11:19]}; not yet read"
    with dash.app_context():
        service.change("erin", "read", [created["id"]])
    body = client.get(f"/dashboard/api/notifications/{created['id']}/trace").json
    assert body["verdict"].endswith("; read at " + body["delivery"]["read_at"][11:19])


def test_verdict_in_plain_words() -> None:
    from app.dashboard.service import verdict

    base = {"stored_at": "2026-12-07T10:42:00.000Z", "published_at": None, "sent": [], "received_at": None,
            "seen_at": None, "read_at": None, "archived_at": None}  # fmt: skip
    assert verdict(base) == "stored, not yet published (or its record is not in yet); not yet read"
    published = {**base, "published_at": "2026-12-07T10:42:00.100Z"}
    assert verdict(published).startswith("published at 10:42:00; no open connection received it")
    one = {**published, "sent": [{"received_at": None}], "seen_at": "2026-12-07T10:43:00.000Z"}
    assert verdict(one) == "sent to 1 connection, no receipt yet; seen at 10:43:00, not yet read"
    archived = {**one, "archived_at": "2026-12-07T11:00:00.000Z"}
    assert verdict(archived).endswith("; archived at 11:00:00")


def test_user_page_shows_what_is_scheduled_and_the_push_browsers(dash: Flask) -> None:
    from datetime import datetime, timedelta, timezone

    from app.push import subscriptions

    client = signed_in(dash)
    assert "Nothing scheduled." in client.get("/dashboard/users/sched").text
    send_at = datetime.now(timezone.utc) + timedelta(days=3)
    with dash.app_context():
        dash.extensions["notifications"].create(["sched"], "in three days", title="Later", send_at=send_at)
        notify(dash, "sched", "sent now")
        endpoint = "https://push.example.net/wpush/secret-token-123"
        subscriptions.save(subscriptions.Subscription("sub1", "sched", endpoint, "p" * 87, "a" * 22), keep=10)
    page = client.get("/dashboard/users/sched").text
    scheduled = page[page.index('id="scheduled-list"') : page.index("Web Push browsers")]
    assert "in three days" in scheduled and "sent now" not in scheduled
    assert send_at.strftime("%Y-%m-%d %H:%M") in scheduled
    assert "push.example.net" in page and "secret-token-123" not in page  # the endpoint is a secret
