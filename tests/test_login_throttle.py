"""Dashboard sign-in: failures cannot lock a staff member out, and a bad request leaves nothing.

Against gunicorn behind a trusted proxy hop (``PROXY_HOPS=1``): the client address the app
throttles by is the one X-Forwarded-For names, as nginx would send it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import gevent
import pytest
import redis
import requests

from tests.support import LiveServer

ADMIN, PASSWORD = "admin", "correct horse battery"
ADDRESS_A, ADDRESS_B = "203.0.113.7", "198.51.100.20"


@pytest.fixture
def dashboard(live: Callable[..., Any]) -> LiveServer:
    return live(workers=1, PROXY_HOPS="1", ADMIN_USERNAME=ADMIN, ADMIN_PASSWORD=PASSWORD)


def _browser(address: str) -> requests.Session:
    session = requests.Session()
    session.headers["X-Forwarded-For"] = address
    return session


def _sign_in(server: LiveServer, browser: requests.Session, password: str, **form: str) -> requests.Response:
    page = browser.get(server.url + "/dashboard/login", timeout=5)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token, page.text
    fields = {"username": ADMIN, "password": password, "csrf_token": token[1], **form}
    return browser.post(server.url + "/dashboard/login", data=fields, allow_redirects=False, timeout=30)


def _staff_sessions(server: LiveServer) -> list[bytes]:
    client = redis.Redis.from_url(server.stack.redis_url)
    return list(client.scan_iter(match=f"{server.stack.prefix}staffsess:*"))


def test_failures_from_one_address_do_not_lock_the_account_elsewhere(dashboard: LiveServer) -> None:
    attacker = _browser(ADDRESS_A)
    for _ in range(5):
        assert _sign_in(dashboard, attacker, "wrong password").status_code == 401
    assert _sign_in(dashboard, attacker, PASSWORD).status_code == 429  # that address is locked out
    started = time.monotonic()
    owner = _sign_in(dashboard, _browser(ADDRESS_B), PASSWORD)
    assert owner.status_code == 302 and owner.headers["Location"] == "/dashboard", owner.text
    assert time.monotonic() - started >= 1.0  # slowed down: five failures for the name


def test_repeated_failures_slow_a_name_down_exponentially(dashboard: LiveServer) -> None:
    """A guesser spreading over addresses pays 1, 2, 4 ... seconds per attempt for the name."""
    for i in range(5):
        assert _sign_in(dashboard, _browser(f"192.0.2.{i}"), "wrong password").status_code == 401
    waits = []
    for i in range(2):
        started = time.monotonic()
        assert _sign_in(dashboard, _browser(f"192.0.2.{10 + i}"), "wrong password").status_code == 401
        waits.append(time.monotonic() - started)
    assert 1.0 <= waits[0] < 2.0 <= waits[1] < 4.0, waits


def test_concurrent_guesses_from_one_address_get_no_more_than_the_limit(dashboard: LiveServer) -> None:
    """Twenty wrong passwords at once: each is counted before its check, so five are checked."""
    browsers = [_browser(ADDRESS_A) for _ in range(20)]
    forms = []
    for browser in browsers:  # each with its own session and CSRF token, sent together below
        page = browser.get(dashboard.url + "/dashboard/login", timeout=5).text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert token
        forms.append({"username": ADMIN, "password": "wrong password", "csrf_token": token[1]})
    jobs = [
        gevent.spawn(b.post, dashboard.url + "/dashboard/login", data=f, allow_redirects=False, timeout=30)
        for b, f in zip(browsers, forms, strict=True)
    ]
    gevent.joinall(jobs, raise_error=True)
    statuses = sorted(job.value.status_code for job in jobs)
    assert statuses == [401] * 5 + [429] * 15, statuses


def test_next_with_a_line_break_is_400_and_opens_no_session(dashboard: LiveServer) -> None:
    browser = _browser(ADDRESS_B)
    for target in ("/dashboard\r\nSet-Cookie: x=1", "/dashboard\nX: y", "/dashboard\r"):
        resp = _sign_in(dashboard, browser, PASSWORD, next=target)
        assert resp.status_code == 400, (target, resp.status_code)
        assert "next" in resp.text and "Set-Cookie: x" not in str(resp.headers)
        assert _staff_sessions(dashboard) == []
        shown = browser.get(dashboard.url + "/dashboard/login", params={"next": target}, timeout=5)
        assert shown.status_code == 400
    assert _sign_in(dashboard, browser, PASSWORD).status_code == 302  # a sane sign-in still works
    assert len(_staff_sessions(dashboard)) == 1
    signed_in = browser.get(dashboard.url + "/dashboard/login?next=/dashboard%0d%0aX:%20y", timeout=5)
    assert signed_in.status_code == 400
