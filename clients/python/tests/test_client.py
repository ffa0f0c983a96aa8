"""notify_client against a live gunicorn, plus a flaky front proxy for the retry paths."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from gevent.pywsgi import WSGIServer
from notify_client import Counts, NotifyClient, NotifyError

from tests.test_ratelimit import _not_near_window_end
from tools.devservers import find_free_port


class FlakyFront:
    """Forwards to the live app; answers the first ``fail`` requests with ``status`` instead.

    With ``forward_failures`` the app still handles a failed request first: its response is
    "lost", as when a connection drops after the server committed.
    """

    def __init__(self, upstream: str, fail: int, status: int = 502, retry_after: str | None = None,
                 forward_failures: bool = True) -> None:  # fmt: skip
        self.upstream = upstream
        self.fail = fail
        self.status = status
        self.retry_after = retry_after
        self.forward_failures = forward_failures
        self.seen: list[tuple[str, str | None, int]] = []  # (path, Idempotency-Key, status returned)
        self.server = WSGIServer(("127.0.0.1", 0), self.app, log=None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def app(self, environ, start_response):
        body = environ["wsgi.input"].read()
        headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
        headers["Content-Type"] = environ.get("CONTENT_TYPE", "")
        query = environ.get("QUERY_STRING")
        url = self.upstream + environ["PATH_INFO"] + (f"?{query}" if query else "")
        failing = len(self.seen) < self.fail
        resp = None
        if not failing or self.forward_failures:
            resp = requests.request(environ["REQUEST_METHOD"], url, data=body, headers=headers, timeout=10)
        status = self.status if failing else resp.status_code
        self.seen.append((environ["PATH_INFO"], headers.get("Idempotency-Key"), status))
        if failing:
            extra = [("Retry-After", self.retry_after)] if self.retry_after else []
            start_response(f"{status} Failing", [("Content-Type", "text/plain"), *extra])
            return [b"upstream trouble"]
        start_response(f"{resp.status_code} X", [("Content-Type", resp.headers.get("Content-Type", ""))])
        return [resp.content]


@pytest.fixture
def server(live):
    return live()


@pytest.fixture
def flaky(server) -> Iterator:
    fronts: list[FlakyFront] = []

    def make(**kwargs) -> FlakyFront:
        front = FlakyFront(server.url, **kwargs)
        front.server.start()
        fronts.append(front)
        return front

    yield make
    for front in fronts:
        front.server.stop(timeout=1)


def _client(url: str, api_key: str, sleeps: list[float] | None = None, **kwargs) -> NotifyClient:
    record = sleeps.append if sleeps is not None else (lambda _s: None)
    return NotifyClient(url, api_key, timeout=5, sleep=record, **kwargs)


def test_send_history_unread_mark_read_and_tokens(server):
    with _client(server.url, server.stack.api_key) as notify:
        first = notify.send("cl-user", "hello", title="T", category="c", data={"k": 1})
        assert first["user_id"] == "cl-user" and first["data"] == {"k": 1} and first["title"] == "T"
        many = notify.send_many(["cl-a", "cl-b"], "fan-out")
        assert [n["user_id"] for n in many] == ["cl-a", "cl-b"]
        notify.send("cl-user", "second")
        page = notify.history("cl-user", limit=1)
        assert [n["message"] for n in page.notifications] == ["second"] and page.next
        older = notify.history("cl-user", limit=1, before=page.next)
        assert [n["id"] for n in older.notifications] == [first["id"]]
        assert notify.unread_count("cl-user") == 2
        assert notify.mark_read("cl-user", [first["id"]]) == 1
        assert [n["message"] for n in notify.history("cl-user", unread=True).notifications] == ["second"]
        assert notify.mark_read("cl-user") == 1 and notify.unread_count("cl-user") == 0
        token = notify.mint_token("cl-user", ttl_seconds=60)
        assert token.user_id == "cl-user"
        bearer = {"Authorization": f"Bearer {token.token}"}
        mine = requests.get(server.url + "/api/me/unread-count", headers=bearer, timeout=5)
        assert mine.json() == {"user_id": "cl-user", "unread": 0}


def test_inbox_states_counts_delete_and_trace(server):
    with _client(server.url, server.stack.api_key) as notify:
        action = {"label": "Open", "url": "/runs/7"}
        first = notify.send("cl-ibx", "one", priority="high", actions=[action], category="jobs")
        second = notify.send("cl-ibx", "two")
        assert first["priority"] == "high" and first["actions"] == [action]
        assert notify.counts("cl-ibx") == Counts(unseen=2, unread=2, total=2)
        assert notify.change("cl-ibx", "seen") == 2
        assert notify.change("cl-ibx", "archive", [second["id"]]) == 1
        assert notify.counts("cl-ibx") == Counts(unseen=0, unread=1, total=1)
        archived = notify.history("cl-ibx", state="archived").notifications
        assert [n["id"] for n in archived] == [second["id"]]
        assert [n["id"] for n in notify.history("cl-ibx", category="jobs").notifications] == [first["id"]]
        assert notify.change("cl-ibx", "unarchive", [second["id"]]) == 1
        notify.delete("cl-ibx", second["id"])
        assert notify.counts("cl-ibx").total == 1
        with pytest.raises(NotifyError) as err:
            notify.delete("cl-ibx", second["id"])  # already gone from the inbox
        assert err.value.status == 404
        with pytest.raises(ValueError):
            notify.change("cl-ibx", "explode")
        traced = notify.trace(first["id"])
        assert traced["id"] == first["id"] and traced["delivery"]["stored_at"]
        assert traced["delivery"]["seen_at"] and traced["delivery"]["read_at"] is None


def test_client_errors_are_typed_and_not_retried(server):
    sleeps: list[float] = []
    notify = _client(server.url, server.stack.api_key, sleeps)
    with pytest.raises(NotifyError) as info:
        notify.send("bad user id", "x")
    assert (info.value.status, info.value.code, info.value.field) == (422, "invalid_field", "user_id")
    with pytest.raises(NotifyError) as info:
        _client(server.url, "wrong-key", sleeps).unread_count("u")
    assert info.value.status == 401 and info.value.code == "unauthorized"
    assert sleeps == []


def test_lost_response_is_retried_with_the_same_idempotency_key(server, flaky):
    front = flaky(fail=2, status=502)
    sleeps: list[float] = []
    sent = _client(front.url, server.stack.api_key, sleeps).send("cl-idem", "exactly once")
    keys = {key for _, key, _ in front.seen}
    assert [status for *_, status in front.seen] == [502, 502, 201] and len(keys) == 1 and None not in keys
    assert len(sleeps) == 2
    history = _client(server.url, server.stack.api_key).history("cl-idem")
    assert [n["id"] for n in history.notifications] == [sent["id"]]  # stored once, though handled 3 times
    _client(front.url, server.stack.api_key).send("cl-idem", "another call")
    assert front.seen[-1][1] not in keys  # a new logical call gets a new key


def test_retry_after_is_honoured_and_retries_are_bounded(server, flaky):
    front = flaky(fail=10, status=429, retry_after="3", forward_failures=False)
    sleeps: list[float] = []
    with pytest.raises(NotifyError) as info:
        _client(front.url, server.stack.api_key, sleeps, retries=2).unread_count("u")
    assert info.value.status == 429 and info.value.retry_after == 3.0
    assert len(front.seen) == 3 and sleeps and all(s >= 3.0 for s in sleeps)


def test_connection_errors_back_off_exponentially_with_jitter():
    sleeps: list[float] = []
    dead = f"http://127.0.0.1:{find_free_port()}"
    notify = _client(dead, "k", sleeps, retries=4, backoff=0.5, max_backoff=2.0)
    with pytest.raises(NotifyError) as info:
        notify.send("u", "m")
    assert info.value.status == 0 and info.value.code == "connection_error"
    assert len(sleeps) == 4
    assert all(0 <= s <= cap for s, cap in zip(sleeps, [0.5, 1.0, 2.0, 2.0], strict=True))


def test_rate_limit_from_the_live_app_is_retried_after_the_window(live):
    server = live(RATE_LIMIT_POSTS_PER_MINUTE="1")
    sleeps: list[float] = []
    notify = _client(server.url, server.stack.api_key, sleeps, retries=1)
    _not_near_window_end()
    notify.send("cl-rl", "one")
    with pytest.raises(NotifyError) as info:
        notify.send("cl-rl", "two")
    assert info.value.status == 429 and info.value.code == "rate_limited"
    assert len(sleeps) == 1 and sleeps[0] >= info.value.retry_after >= 1
