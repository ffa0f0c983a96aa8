"""The lean POST path (app/api/fastpath.py) answers exactly as the Flask view does.

Every request is sent to two apps on the same servers, one with the lean path and one
without (``LEAN_API=0``); status, headers, body and the request's log line must match,
with ids, cursors and times set aside. The inner Flask app is wrapped to see which path
served a request.
"""

from __future__ import annotations

import http.client
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import requests
from flask import Flask

from app.api.fastpath import LeanPost
from app.ops.logs import JsonFormatter
from app.store.models import MARKERS, notifications_collection
from tests.support import wait_until

PATH = "/api/notifications"
VOLATILE = re.compile(rb'"(id|seq|created_at)":("[^"]*"|\d+)')
LOGGED = ("method", "path", "endpoint", "status", "api_key", "client", "request_id")


def flask_calls(app: Flask) -> list[str]:
    """Paths the Flask app behind the lean path was called for."""
    lean = app.wsgi_app.wsgi_app  # inside the body deadline (app/ops/body.py)
    assert isinstance(lean, LeanPost)
    inner, seen = lean.wsgi_app, []

    def spy(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        seen.append(environ["PATH_INFO"])
        return inner(environ, start_response)

    lean.wsgi_app = spy
    return seen


@pytest.fixture
def pair(make_app: Callable[..., Flask]) -> tuple[Flask, Flask]:
    return make_app(), make_app(LEAN_API=0)


class JsonLines(logging.Handler):
    """The request log lines as the production formatter writes them, while they are emitted."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(orjson.loads(self.format(record)))


@pytest.fixture
def logged() -> Iterator[JsonLines]:
    handler, logger = JsonLines(), logging.getLogger("app.requests")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def send(app: Flask, logged: JsonLines, data: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """One POST: its response and its log line."""
    logged.lines.clear()
    resp = app.test_client().post(PATH, data=data, headers=headers)
    lines = [line for line in logged.lines if line["msg"] == "request"]
    assert len(lines) == 1
    return {
        "status": resp.status_code,
        "headers": [(k, v) for k, v in resp.headers.items() if k not in ("Content-Length", "X-Request-ID")],
        "request_id": resp.headers["X-Request-ID"],
        "body": VOLATILE.sub(rb'"\1":0', resp.get_data()),
        "log": {k: lines[0].get(k) for k in LOGGED},
    }


KEY = {"Authorization": "Bearer test-api-key", "X-Request-ID": "req-1"}
JSON = {**KEY, "Content-Type": "application/json"}
CASES = [
    (orjson.dumps({"user_id": "alice", "message": "hi", "title": "T", "data": {"k": [1]}}), JSON),
    (orjson.dumps({"user_ids": ["a", "b"], "message": "both"}), JSON),
    (orjson.dumps({"user_id": "a b", "message": "x"}), JSON),
    (orjson.dumps({"user_id": "a", "message": ""}), JSON),
    (orjson.dumps({"user_id": "a", "user_ids": ["b"], "message": "x"}), JSON),
    (orjson.dumps({"user_id": "~outbox", "message": "x"}), JSON),
    (b"{not json", JSON),
    (b"[1, 2]", JSON),
    (b" ", JSON),
    (orjson.dumps({"user_id": "a", "message": "x"}), {**JSON, "Authorization": ""}),
    (orjson.dumps({"user_id": "a", "message": "x"}), {**JSON, "Authorization": "Bearer wrong"}),
    (orjson.dumps({"user_id": "a", "message": "x"}), {**JSON, "Content-Type": "application/merge+json"}),
    (orjson.dumps({"user_id": "a", "message": "x", "priority": "high"}), JSON),
    (orjson.dumps({"user_id": "a", "message": "x", "data": {"a": [0, {"b": 2**64 - 1}]}}), JSON),
    (orjson.dumps({"user_id": "a", "message": "x"}), {**JSON, "Idempotency-Key": "x" * 256}),
]


@pytest.mark.parametrize("data, headers", CASES)
def test_lean_path_answers_as_the_view_does(pair, logged, data, headers):
    lean, view = pair
    served_by_flask = flask_calls(lean)
    got, want = send(lean, logged, data, headers), send(view, logged, data, headers)
    assert served_by_flask == []
    assert got == want
    assert got["request_id"] == got["log"]["request_id"] == "req-1"


def test_request_id_is_generated_when_missing_or_insane(app, logged):
    for given in ({}, {"X-Request-ID": "not sane!"}):
        got = send(
            app,
            logged,
            orjson.dumps({"user_id": "a", "message": "x"}),
            {**JSON, **given} if given else {k: v for k, v in JSON.items() if k != "X-Request-ID"},
        )
        assert (
            re.fullmatch(r"[0-9a-f]{32}", got["request_id"]) and got["log"]["request_id"] == got["request_id"]
        )


def test_rate_limit_is_counted_once_and_answered_alike(make_app, stack, logged):
    view = {"LEAN_API": 0, "KEY_PREFIX": stack.prefix + "view:"}  # a rate-limit counter of its own
    apps = [make_app(RATE_LIMIT_POSTS_PER_MINUTE=3, **lean) for lean in ({}, view)]
    body = orjson.dumps({"user_id": "a", "message": "x"})
    answers = [[send(app, logged, body, JSON) for _ in range(4)] for app in apps]
    assert [a["status"] for a in answers[0]] == [201, 201, 201, 429]
    for limited in (answers[0][3], answers[1][3]):  # seconds left in the window may differ by one
        retry = dict(limited["headers"]).pop("Retry-After")
        assert int(retry) >= 1 and f"retry in {retry}s".encode() in limited["body"]
        limited["headers"] = [h for h in limited["headers"] if h[0] != "Retry-After"]
        limited["body"] = re.sub(rb"retry in \d+s", b"retry in Ns", limited["body"])
    assert answers[0] == answers[1]


@pytest.mark.parametrize(
    "headers, status",
    [
        ({**KEY, "Content-Type": "text/plain"}, 415),
        ({**KEY}, 415),
        ({**JSON, "Transfer-Encoding": "chunked"}, 400),  # the test client sends it unchunked
    ],
)
def test_unusual_requests_go_to_flask(app, headers, status):
    served_by_flask = flask_calls(app)
    resp = app.test_client().post(PATH, data=orjson.dumps({"user_id": "a", "message": "x"}), headers=headers)
    assert served_by_flask == [PATH]
    assert resp.status_code == status


def test_a_body_over_the_limit_goes_to_flask(make_app):
    app = make_app(MAX_BODY_BYTES=100)
    served_by_flask = flask_calls(app)
    body = orjson.dumps({"user_id": "a", "message": "x" * 200})
    resp = app.test_client().post(PATH, data=body, headers=JSON)
    assert served_by_flask == [PATH] and resp.status_code == 413
    assert resp.get_json()["error"]["code"] == "payload_too_large"


def test_other_requests_go_to_flask(app, auth):
    served_by_flask = flask_calls(app)
    assert app.test_client().get(PATH, headers=auth).status_code == 405
    assert app.test_client().post(PATH + "/", headers=JSON).status_code == 404
    assert served_by_flask == [PATH, PATH + "/"]


def test_unexpected_error_is_a_json_500_and_logged(app, caplog, monkeypatch):
    caplog.set_level(logging.INFO)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(app.extensions["notifications"], "create", broken)
    resp = app.test_client().post(PATH, data=orjson.dumps({"user_id": "a", "message": "x"}), headers=JSON)
    assert resp.status_code == 500
    assert resp.get_json() == {"error": {"code": "internal_error", "message": "internal server error"}}
    assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)
    logged = [r for r in caplog.records if r.getMessage() == "request"]
    assert [r.status for r in logged] == [500]


def test_an_idempotency_key_is_served_by_the_lean_path_as_by_the_view(pair, logged):
    lean, view = pair
    served_by_flask = flask_calls(lean)
    headers = {**JSON, "Idempotency-Key": "k-9"}
    data = orjson.dumps({"user_id": "keyed", "message": "once"})
    first = send(lean, logged, data, headers)
    with lean.app_context():  # both replays see the batch published (its seq, not null)
        wait_until(lambda: notifications_collection().count_documents(MARKERS) == 0)
    replays = send(lean, logged, data, headers), send(view, logged, data, headers)
    assert served_by_flask == []
    assert first["status"] == 201 and ("Idempotent-Replayed", "true") not in first["headers"]
    assert replays[0] == replays[1] and ("Idempotent-Replayed", "true") in replays[0]["headers"]
    other = orjson.dumps({"user_id": "keyed", "message": "twice"})
    conflicts = send(lean, logged, other, headers), send(view, logged, other, headers)
    assert conflicts[0] == conflicts[1] and conflicts[0]["status"] == 409


@pytest.mark.parametrize(
    "environ, length",
    [
        ({}, 10),
        ({"CONTENT_TYPE": "Application/JSON; charset=utf-8"}, 10),
        ({"HTTP_IDEMPOTENCY_KEY": "k-1"}, 10),
        ({"CONTENT_LENGTH": "\u00b2"}, None),  # a digit to str.isdigit, not to int()
        ({"CONTENT_LENGTH": "-1"}, None),
        ({"CONTENT_LENGTH": "101"}, None),
        ({"CONTENT_TYPE": "text/json"}, None),
        ({"PATH_INFO": "/api/notifications/"}, None),
        ({"REQUEST_METHOD": "PUT"}, None),
    ],
)
def test_which_requests_the_lean_path_takes(environ, length):
    lean = LeanPost(lambda environ, start_response: [], {}, max_body=100)
    plain = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": PATH,
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": "10",
    }
    assert lean.plain_length({**plain, **environ}) == length


def test_lean_path_off(make_app):
    assert not isinstance(make_app(LEAN_API=0).wsgi_app, LeanPost)


def test_keep_alive_connection_under_gunicorn(live, stack):
    """Errors that leave the body unread, then successes, all on one gunicorn connection."""
    server = live()
    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=10)
    good = orjson.dumps({"user_id": "keepalive", "message": "x"})
    sent = [
        (good, {"Authorization": "Bearer wrong"}, 401),
        (b"{not json" + b" " * 5000, {}, 400),
        (orjson.dumps({"user_id": "a b", "message": "x"}), {}, 422),
        (good, {}, 201),
        (good, {"Idempotency-Key": "ka-1"}, 201),
        (good, {}, 201),
    ]
    try:
        conn.connect()
        sock = conn.sock
        for body, headers, status in sent:
            conn.request("POST", PATH, body, {**JSON, "Authorization": f"Bearer {stack.api_key}", **headers})
            resp = conn.getresponse()
            payload = orjson.loads(resp.read())
            assert resp.status == status, payload
            assert resp.getheader("X-Request-ID") == "req-1"
            assert conn.sock is sock  # still the first connection
    finally:
        conn.close()
    history = requests.get(
        f"{server.url}/api/users/keepalive/notifications",
        headers={"Authorization": f"Bearer {stack.api_key}"},
    )
    assert len(history.json()["notifications"]) == 3
